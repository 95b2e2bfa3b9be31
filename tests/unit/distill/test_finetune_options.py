"""Fine-tuning options: R-Drop (``--rdrop``) and training on long examples only
(``--train-min-words``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from shoal.data import encode, iterate, load_task
from shoal.distill.finetune import finetune
from shoal.distill.losses import consistency_loss
from shoal.distill.trainer import TrainConfig
from shoal.errors import ConfigError, DataError
from shoal.models.teacher import load_teacher, logits_of
from tiny_fixtures import tiny_finetune_config


@pytest.fixture
def config(tiny_teacher, tiny_data, tmp_path):
    train = TrainConfig(epochs=2, lr=1e-3, batch_size=8, evals_per_epoch=1)
    return tiny_finetune_config(tiny_teacher, tiny_data, tmp_path / "plain", train=train)


@pytest.fixture
def dropout_teacher(tiny_teacher, tmp_path):
    """The tiny teacher with dropout 0.3 (the fixture's has none)."""
    folder = tmp_path / "dropout-teacher"
    shutil.copytree(tiny_teacher, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = 0.3
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _disagreement(folder, data) -> float:
    """Mean symmetric KL between two dropout passes of the model over the test set."""
    model, tok = load_teacher(folder)
    enc = encode(tok, load_task(data).splits["test"], 32)
    forward = logits_of(model.train())
    torch.manual_seed(0)
    with torch.no_grad():
        kls = [
            consistency_loss(forward(b), forward(b))
            for b in iterate(enc, 16, shuffle=False, seed=0, pad_id=0)
        ]
    return float(torch.stack(kls).mean())


def test_without_dropout_rdrop_is_plain_fine_tuning(config, tmp_path):
    """The two passes of a dropout-free model agree, so the consistency term is 0 and the mean
    of the two losses is the plain loss: the same training, to rounding."""
    finetune(config)
    with_rdrop = replace(config, out=str(tmp_path / "rdrop"), rdrop=1.0)
    finetune(with_rdrop)
    plain, rdrop = _weights(tmp_path / "plain"), _weights(tmp_path / "rdrop")
    assert plain.keys() == rdrop.keys()
    for name in plain:
        if name.endswith("attention.self.key.bias"):
            # Softmax ignores a shift shared by a query's scores, so this gradient is zero
            # in exact arithmetic and Adam (which divides by its root mean square) turns
            # pure rounding into full steps: nothing to compare.
            continue
        # Near-zero gradients of single entries behave alike: compare each tensor whole.
        gap = float((rdrop[name] - plain[name]).norm())
        assert gap <= 1e-2 * float(plain[name].norm()) + 1e-5, (name, gap)
    saved = json.loads((tmp_path / "rdrop" / "shoal_finetune.json").read_text())
    assert saved["config"]["rdrop"] == 1.0


def test_with_dropout_rdrop_makes_the_dropout_passes_agree(config, dropout_teacher, tmp_path):
    # lr 1e-2: the tiny model learns the task (about 0.8 test accuracy), so its logits, and
    # what dropout does to them, are far from zero
    train = replace(config.train, epochs=4, lr=1e-2)
    base = replace(config, model=str(dropout_teacher), train=train)
    finetune(replace(base, out=str(tmp_path / "plain")))
    finetune(replace(base, out=str(tmp_path / "rdrop"), rdrop=5.0))
    plain = _disagreement(tmp_path / "plain", config.data)
    rdrop = _disagreement(tmp_path / "rdrop", config.data)
    assert plain > 0  # else the comparison could not tell
    assert rdrop < 0.5 * plain


def test_trains_on_the_long_examples_only(config, tmp_path):
    report = finetune(replace(config, train_min_words=8))
    train = load_task(config.data).splits["train"]
    long = [t for t in train.texts if len(t.split()) >= 8]
    assert 0 < report["train_examples"] == len(long) < len(train)
    with pytest.raises(DataError, match="no training example has 99 or more words"):
        finetune(replace(config, train_min_words=99))


def test_bad_values_are_refused(config):
    with pytest.raises(ConfigError, match="rdrop=-0.5 must be >= 0"):
        replace(config, rdrop=-0.5)
    with pytest.raises(ConfigError, match="train_min_words=-1"):
        replace(config, train_min_words=-1)
