"""Checkpoints and ``--resume``: a run interrupted part-way and continued ends exactly where
an uninterrupted run ends (weights, optimiser state, schedule, dropout masks)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from shoal.distill import finetune as finetune_mod
from shoal.distill import students as students_mod
from shoal.distill.distill import distill
from shoal.distill.finetune import finetune
from shoal.distill.trainer import Checkpoint, TrainConfig, train
from shoal.errors import ConfigError
from tiny_fixtures import tiny_distill_config, tiny_finetune_config


class Interrupted(Exception):
    """Stands for a killed process."""


def _toy_run(tmp_path, *, interrupt_at: int | None = None, resume: bool = False, seed: int = 0):
    torch.manual_seed(123)  # the same data every run
    xs, ys = torch.randn(40, 4), torch.randn(40, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    calls = 0

    def step(i: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == interrupt_at:
            raise Interrupted
        return nn.functional.mse_loss(model(xs[i]), ys[i])

    def batches(epoch: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(epoch)
        return list(torch.randperm(40, generator=g).split(8))

    config = TrainConfig(epochs=2.5, lr=1e-2, batch_size=8, checkpoint_every=3, seed=seed)
    result = train(
        list(model.named_parameters()),
        step,
        batches,
        config,
        evaluate=lambda: -nn.functional.mse_loss(model(xs), ys).item(),
        set_train=model.train,
        checkpoint=Checkpoint(tmp_path / "ckpt.pt", {"run": "toy"}),
        resume=resume,
    )
    return model, result


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight, straight_result = _toy_run(tmp_path / "a")
    with pytest.raises(Interrupted):
        _toy_run(tmp_path / "b", interrupt_at=8)  # mid-epoch 2, after a checkpoint at step 6
    assert (tmp_path / "b" / "ckpt.pt").is_file()
    # another initialisation: the checkpoint, not the seed, decides where it continues
    resumed, resumed_result = _toy_run(tmp_path / "b", resume=True, seed=1)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed_result.steps == straight_result.steps == 13
    assert resumed_result.history == straight_result.history
    assert not (tmp_path / "b" / "ckpt.pt").exists()  # removed once the run ends


def test_without_resume_a_checkpoint_is_ignored(tmp_path):
    with pytest.raises(Interrupted):
        _toy_run(tmp_path, interrupt_at=8)
    fresh, _ = _toy_run(tmp_path, seed=1)
    other, _ = _toy_run(tmp_path / "c", seed=1)
    for a, b in zip(fresh.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    Checkpoint(path, {"lr": 1e-3}).save({"done": 1})
    with pytest.raises(ConfigError, match=r"other settings \(lr: 0.001 -> 0.002\)"):
        Checkpoint(path, {"lr": 2e-3}).load()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="delete it to start over"):
        Checkpoint(path, {"lr": 1e-3}).load()


def _interrupting(module, at: int):
    """``module.train`` with a ``step`` that raises at call ``at``."""
    real = module.train

    def wrapper(named, step, *args, **kw):
        calls = 0

        def failing(b):
            nonlocal calls
            calls += 1
            if calls == at:
                raise Interrupted
            return step(b)

        return real(named, failing, *args, **kw)

    return wrapper


def test_finetune_resume_gives_the_uninterrupted_model(
    tiny_teacher, tiny_data, tmp_path, monkeypatch
):
    train_cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16, evals_per_epoch=2, checkpoint_every=4)
    cfg = tiny_finetune_config(tiny_teacher, tiny_data, tmp_path / "straight", train=train_cfg)
    straight = finetune(cfg)
    cut = replace(cfg, out=str(tmp_path / "cut"))
    with monkeypatch.context() as m:
        m.setattr(finetune_mod, "train", _interrupting(finetune_mod, 19))
        with pytest.raises(Interrupted):
            finetune(cut)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = finetune(replace(cut, resume=True))
    assert resumed["test"] == straight["test"] and resumed["history"] == straight["history"]
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_continues_a_student_interrupted_mid_training(
    tiny_teacher, tiny_data, tmp_path, monkeypatch
):
    train_cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16, checkpoint_every=3)
    cfg = tiny_distill_config(
        tiny_teacher, tiny_data, tmp_path / "straight", n_students=2, train=train_cfg
    )
    straight = distill(cfg)
    cut = replace(cfg, out=str(tmp_path / "cut"))
    with monkeypatch.context() as m:
        m.setattr(students_mod, "train", _interrupting(students_mod, 5))  # inside student 1
        with pytest.raises(Interrupted):
            distill(cut)
    assert (tmp_path / "cut" / "checkpoints" / "student-1.pt").is_file()
    resumed = distill(cut)
    assert resumed["prefix_accuracy"] == straight["prefix_accuracy"]
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
