"""Distillation on a tiny teacher: ensemble loss, stacking targets, resume."""

from __future__ import annotations

import torch

from shoal.distill import boosting
from shoal.distill import distill as distill_mod
from shoal.distill.distill import DistillConfig, distill, student_outputs
from shoal.distill.trainer import TrainConfig
from shoal.models.cohort import ShoalModel


def _config(teacher, data, out, **kw) -> DistillConfig:
    base = dict(
        teacher=str(teacher),
        data=str(data),
        out=str(out),
        n_students=3,
        max_length=32,
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=32, seed=0),
    )
    base.update(kw)
    return DistillConfig(**base)


def _deep_teacher(tmp_path):
    from tiny_fixtures import make_teacher

    folder = tmp_path / "deep"
    make_teacher(folder, layers=4, seed=3)
    return folder


def test_ensemble_loss_does_not_increase_and_table_is_stored(tmp_path, tiny_data):
    teacher = _deep_teacher(tmp_path)
    report = distill(_config(teacher, tiny_data, tmp_path / "c"))
    model = ShoalModel.from_pretrained(tmp_path / "c")
    assert [row["k"] for row in report["prefix_accuracy"]] == [1, 2, 3]
    assert model.meta["prefix_accuracy"] == report["prefix_accuracy"]
    # Rebuild b_k from the saved students and compare with the teacher's cached states.
    from transformers import AutoTokenizer

    from shoal.data import encode, load_task
    from shoal.distill.cache import TokenStore

    tok = AutoTokenizer.from_pretrained(tmp_path / "c")
    enc = encode(tok, load_task(tiny_data).splits["train"], 32)
    final = TokenStore.load(next((tmp_path / "c" / "cache").glob("depth*")), "final")
    ens = torch.zeros_like(final.data, dtype=torch.float32)
    previous = boosting.boost_loss(final.data, ens)
    store = TokenStore(enc.lengths(), model.config.hidden_size)
    for k in range(3):
        for idx, _, s in student_outputs(model, k, enc, 0):
            store.add_(idx, s, float(model.alpha[k]))
        loss = boosting.boost_loss(final.data, store.data)
        assert loss <= previous + 1e-6
        previous = loss


def test_stacking_targets_are_the_frozen_previous_students(tmp_path, tiny_data, monkeypatch):
    teacher = _deep_teacher(tmp_path)
    seen: list[torch.Tensor] = []
    real = distill_mod.losses.stacking_loss

    def spy(projected, target, mask):
        seen.append(target.detach().clone())
        return real(projected, target, mask)

    monkeypatch.setattr(distill_mod.losses, "stacking_loss", spy)
    captured = {}
    real_train = distill_mod._train_student

    def wrapped(model, k, enc, cache, ensemble, pad, config):
        seen.clear()
        real_train(model, k, enc, cache, ensemble, pad, config)
        if k == 1:
            captured["targets"] = list(seen)
            captured["ensemble"] = ensemble.hidden.data.clone()
            captured["alpha0"] = float(model.alpha[0])
            captured["s0"] = TokenStore_from(model, 0, enc)

    from shoal.distill.cache import TokenStore

    def TokenStore_from(model, k, enc):  # noqa: N802 - mirrors the class it builds
        store = TokenStore(enc.lengths(), model.config.hidden_size)
        for idx, _, s in student_outputs(model, k, enc, 0):
            store.add_(idx, s)
        return store.data

    monkeypatch.setattr(distill_mod, "_train_student", wrapped)
    distill(_config(teacher, tiny_data, tmp_path / "c", n_students=2))
    # b_1 = alpha_1 * s_1 of the (frozen) first student, and targets were its slices.
    torch.testing.assert_close(captured["ensemble"], captured["alpha0"] * captured["s0"])
    assert captured["targets"], "student 2 never computed a stacking loss"
    nonzero = [t for t in captured["targets"] if t.abs().sum() > 0]
    assert len(nonzero) == len(captured["targets"])


def test_resume_after_interruption_gives_the_same_cohort(tmp_path, tiny_data):
    teacher = _deep_teacher(tmp_path)
    distill(_config(teacher, tiny_data, tmp_path / "full"))
    partial = distill(_config(teacher, tiny_data, tmp_path / "resumed"), stop_after=1)
    assert partial["stopped_after"] == 1
    distill(_config(teacher, tiny_data, tmp_path / "resumed"))
    a = ShoalModel.from_pretrained(tmp_path / "full").state_dict()
    b = ShoalModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_average_method_combines_by_mean(tmp_path, tiny_data):
    teacher = _deep_teacher(tmp_path)
    distill(_config(teacher, tiny_data, tmp_path / "avg", method="average", n_students=2))
    model = ShoalModel.from_pretrained(tmp_path / "avg")
    assert model.config.combine == "mean"
    assert model.weights(2).tolist() == [0.5, 0.5]


def test_ablations_share_the_teacher_cache_and_match_budgets(tmp_path, tiny_data):
    from shoal.distill.ablations import run_ablations, variant_config

    teacher = _deep_teacher(tmp_path)
    base = _config(teacher, tiny_data, tmp_path / "abl", n_students=2)
    single = variant_config(base, "single", tmp_path)
    deep = variant_config(base, "deep", tmp_path)
    assert single.train.epochs == 2 * base.train.epochs and single.n_students == 1
    assert deep.student_layers == 4 and deep.train.epochs == base.train.epochs
    result = run_ablations(base, tmp_path / "abl", ["stack", "average"])
    assert [r["variant"] for r in result["rows"]] == ["stack", "average"]
    assert len(list((tmp_path / "abl" / "teacher-cache").glob("depth*"))) == 1
    assert "| stack |" in (tmp_path / "abl" / "ablations.md").read_text()


def test_logit_space_boosting_lowers_the_logit_residual(tmp_path, tiny_data):
    teacher = _deep_teacher(tmp_path)
    distill(_config(teacher, tiny_data, tmp_path / "lg", space="logits"))
    model = ShoalModel.from_pretrained(tmp_path / "lg")
    assert model.config.head_per_student and len(model.heads) == 3
    teacher_logits = torch.load(next((tmp_path / "lg" / "cache").glob("depth*")) / "logits.pt")
    from transformers import AutoTokenizer

    from shoal.data import encode, iterate, load_task

    tok = AutoTokenizer.from_pretrained(tmp_path / "lg")
    enc = encode(tok, load_task(tiny_data).splits["train"], 32)
    prefix = torch.zeros(3, len(enc), 2)
    for b in iterate(enc, 64, shuffle=False):
        prefix[:, b["index"]] = model.prefix_logits(
            b["input_ids"], b["attention_mask"], b["token_type_ids"]
        )
    errors = [boosting.boost_loss(teacher_logits, prefix[k]) for k in range(3)]
    assert errors[0] >= errors[1] - 1e-6 >= errors[2] - 2e-6
