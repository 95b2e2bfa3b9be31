"""Distillation on a tiny teacher: ensemble loss, stacking targets, resume."""

from __future__ import annotations

import pytest
import torch

from shoal.distill import boosting, losses, teacher_outputs
from shoal.distill import distill as distill_mod
from shoal.distill.distill import DistillConfig, distill, student_outputs
from shoal.distill.ensemble import accumulate
from shoal.distill.trainer import TrainConfig
from shoal.errors import ConfigError
from shoal.models.cohort import ShoalModel
from tiny_fixtures import tiny_distill_config


def _config(teacher, data, out, **kw) -> DistillConfig:
    # the boosting tests need boosting; 'average' is named where used
    return tiny_distill_config(teacher, data, out, **{"n_students": 3, "method": "stack", **kw})


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
    from shoal.distill.token_store import TokenStore

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
    real = losses.stacking_loss

    def spy(projected, target, mask):
        seen.append(target.detach().clone())
        return real(projected, target, mask)

    monkeypatch.setattr(losses, "stacking_loss", spy)
    captured = {}
    real_train = distill_mod.train_student

    def wrapped(model, k, enc, cache, ensemble, pad, config, out, **kw):
        seen.clear()
        real_train(model, k, enc, cache, ensemble, pad, config, out, **kw)
        if k == 1:
            captured["targets"] = list(seen)
            captured["ensemble"] = ensemble.hidden.data.clone()
            captured["alpha0"] = float(model.alpha[0])
            captured["s0"] = TokenStore_from(model, 0, enc)

    from shoal.distill.token_store import TokenStore

    def TokenStore_from(model, k, enc):  # noqa: N802 - mirrors the class it builds
        store = TokenStore(enc.lengths(), model.config.hidden_size)
        for idx, _, s in student_outputs(model, k, enc, 0):
            store.add_(idx, s)
        return store.data

    monkeypatch.setattr(distill_mod, "train_student", wrapped)
    distill(_config(teacher, tiny_data, tmp_path / "c", n_students=2))
    # b_1 = alpha_1 * s_1 of the (frozen) first student, and targets were its slices.
    torch.testing.assert_close(captured["ensemble"], captured["alpha0"] * captured["s0"])
    assert captured["targets"], "student 2 never computed a stacking loss"
    nonzero = [t for t in captured["targets"] if t.abs().sum() > 0]
    assert len(nonzero) == len(captured["targets"])


@pytest.mark.parametrize("method", ["stack", "average"])
def test_resume_after_interruption_gives_the_same_cohort(tmp_path, tiny_data, method):
    teacher = _deep_teacher(tmp_path)
    distill(_config(teacher, tiny_data, tmp_path / "full", method=method))
    partial = distill(
        _config(teacher, tiny_data, tmp_path / "resumed", method=method), stop_after=1
    )
    assert partial["stopped_after"] == 1
    distill(_config(teacher, tiny_data, tmp_path / "resumed", method=method))
    a = ShoalModel.from_pretrained(tmp_path / "full").state_dict()
    b = ShoalModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["stack", "average"])
def test_more_students_extend_a_finished_cohort(tmp_path, tiny_data, method):
    teacher = _deep_teacher(tmp_path)
    distill(_config(teacher, tiny_data, tmp_path / "full", method=method, n_students=2))
    distill(_config(teacher, tiny_data, tmp_path / "grown", method=method, n_students=1))
    first = ShoalModel.from_pretrained(tmp_path / "grown").state_dict()
    report = distill(_config(teacher, tiny_data, tmp_path / "grown", method=method, n_students=2))
    assert len(report["prefix_accuracy"]) == 2
    a = ShoalModel.from_pretrained(tmp_path / "full").state_dict()
    b = ShoalModel.from_pretrained(tmp_path / "grown").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    for name, value in first.items():  # the first student was kept, not retrained
        if name.startswith("students.0."):
            assert torch.equal(value, b[name]), name


def test_resuming_with_other_settings_or_fewer_students_is_refused(tmp_path, tiny_data):
    teacher = _deep_teacher(tmp_path)
    out = tmp_path / "c"
    distill(_config(teacher, tiny_data, out, n_students=2), stop_after=1)
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.002.*new --out"):
        distill(
            _config(
                teacher,
                tiny_data,
                out,
                n_students=2,
                train=TrainConfig(epochs=1, lr=2e-3, batch_size=32, seed=0),
            )
        )
    with pytest.raises(ConfigError, match="method"):
        distill(_config(teacher, tiny_data, out, n_students=2, method="boost"))
    distill(_config(teacher, tiny_data, out, n_students=2))  # the same settings resume
    with pytest.raises(ConfigError, match="already holds 2 trained students"):
        distill(_config(teacher, tiny_data, out, n_students=1))
    moved = out.rename(tmp_path / "moved")  # a moved folder is still the same run
    distill(_config(teacher, tiny_data, moved, n_students=2))
    assert ShoalModel.from_pretrained(moved).n_students == 2


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


def _scores_from_prefix_logits(model: ShoalModel, folder, data) -> dict[str, list[float]]:
    """Per-split accuracy of every prefix, computed by the serving model's own forward."""
    from transformers import AutoTokenizer

    from shoal.data import encode, iterate, load_task
    from shoal.distill.evaluate import score

    tok = AutoTokenizer.from_pretrained(folder)
    task = load_task(data)
    out = {}
    for split in ("dev", "test"):
        enc = encode(tok, task.splits[split], 32)
        prefix = torch.zeros(model.n_students, len(enc), model.config.num_labels)
        for b in iterate(enc, 64, shuffle=False):
            prefix[:, b["index"]] = model.prefix_logits(
                b["input_ids"], b["attention_mask"], b["token_type_ids"]
            )
        out[split] = [score(prefix[k], enc.labels)["accuracy"] for k in range(model.n_students)]
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"space": "logits"},
        {"method": "average"},
        {"joint_epochs": 1.0},
        {"joint_epochs": 1.0, "space": "logits"},
    ],
    ids=["hidden", "logits", "average", "joint", "joint-logits"],
)
def test_stored_prefix_table_matches_the_saved_cohort(tmp_path, tiny_data, kw):
    # The table is built incrementally (each student run once over dev/test); it must agree
    # with what `shoal eval` computes from the saved cohort in one fused pass.
    teacher = _deep_teacher(tmp_path)
    report = distill(_config(teacher, tiny_data, tmp_path / "c", **kw))
    model = ShoalModel.from_pretrained(tmp_path / "c")
    expected = _scores_from_prefix_logits(model, tmp_path / "c", tiny_data)
    for split in ("dev", "test"):
        stored = [row[f"{split}_accuracy"] for row in report["prefix_accuracy"]]
        assert stored == pytest.approx(expected[split], abs=1e-9), split


def test_one_pass_update_equals_the_two_pass_reference(tmp_path, tiny_data, monkeypatch):
    # fit_alpha_and_add computes alpha and b_k from one pass; the reference recomputes the
    # student's outputs for alpha and again for the update.
    teacher = _deep_teacher(tmp_path)
    captured = {}
    real_add = distill_mod.fit_alpha_and_add

    def spy(model, k, enc, cache, ensemble, pad, config):
        before = distill_mod.Ensemble(
            distill_mod.TokenStore(enc.lengths(), model.config.hidden_size),
            ensemble.logits.clone(),
        )
        before.hidden.data.copy_(ensemble.hidden.data)
        alpha = real_add(model, k, enc, cache, ensemble, pad, config)
        acc = boosting.AlphaAccumulator()
        for idx, mask, s in student_outputs(model, k, enc, pad):
            r = boosting.residual(cache.final.gather(idx), before.hidden.gather(idx))
            acc.add(r.to(s.device)[mask.bool()], s[mask.bool()])
        accumulate(model, k, enc, before, pad, acc.alpha())
        captured[k] = (alpha, acc.alpha(), ensemble.hidden.data.clone(), before.hidden.data)
        return alpha

    monkeypatch.setattr(distill_mod, "fit_alpha_and_add", spy)
    distill(_config(teacher, tiny_data, tmp_path / "c", n_students=2))
    assert set(captured) == {0, 1}
    for alpha, ref_alpha, one_pass, two_pass in captured.values():
        assert alpha == pytest.approx(ref_alpha, rel=1e-9)
        torch.testing.assert_close(one_pass, two_pass, rtol=0, atol=1e-6)


def _prefix_boost_losses(model: ShoalModel, folder, data) -> list[float]:
    """L_boost(T, b_k) on the training set for every prefix k."""
    from transformers import AutoTokenizer

    from shoal.data import encode, load_task
    from shoal.distill.token_store import TokenStore

    tok = AutoTokenizer.from_pretrained(folder)
    enc = encode(tok, load_task(data).splits["train"], 32)
    final = TokenStore.load(next((folder / "cache").glob("depth*")), "final")
    store = TokenStore(enc.lengths(), model.config.hidden_size)
    out = []
    for k in range(model.n_students):
        for idx, _, s in student_outputs(model, k, enc, 0):
            store.add_(idx, s, float(model.alpha[k]))
        out.append(boosting.boost_loss(final.data, store.data))
    return out


def test_joint_phase_lowers_every_prefix_loss_and_keeps_shared_parts(tmp_path, tiny_data):
    teacher = _deep_teacher(tmp_path)
    distill(_config(teacher, tiny_data, tmp_path / "boost", w_kd=0.0, method="boost"))
    distill(
        _config(teacher, tiny_data, tmp_path / "joint", w_kd=0.0, method="boost", joint_epochs=3.0)
    )
    boosted = ShoalModel.from_pretrained(tmp_path / "boost")
    joint = ShoalModel.from_pretrained(tmp_path / "joint")
    before = _prefix_boost_losses(boosted, tmp_path / "boost", tiny_data)
    after = _prefix_boost_losses(joint, tmp_path / "joint", tiny_data)
    assert sum(after) < sum(before)
    assert after[-1] < before[-1]
    a, b = boosted.state_dict(), joint.state_dict()
    for name in a:
        if not name.startswith("students."):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith("students."))
    times = joint.meta["train_seconds"]
    assert times["joint"] > 0 and len(times["students"]) == 3


@pytest.mark.parametrize("space", ["hidden", "logits"])
def test_min_gain_keeps_only_students_that_pay(tmp_path, tiny_data, space):
    # No student can gain a whole accuracy unit, so offline pruning stops after the first.
    teacher = _deep_teacher(tmp_path)
    report = distill(_config(teacher, tiny_data, tmp_path / "p", min_gain=1.0, space=space))
    model = ShoalModel.from_pretrained(tmp_path / "p")
    assert model.n_students == 1 and model.alpha.shape == (1,)
    assert [row["k"] for row in report["prefix_accuracy"]] == [1]
    if space == "logits":
        assert len(model.heads) == 1


def test_dropout_and_explicit_init_reach_the_students(tmp_path, tiny_data, monkeypatch):
    teacher = _deep_teacher(tmp_path)
    seen = {}
    real = distill_mod.train_student

    def spy(model, k, *args, **kw):
        seen[k] = [m.p for m in model.students[k].modules() if isinstance(m, torch.nn.Dropout)]
        return real(model, k, *args, **kw)

    monkeypatch.setattr(distill_mod, "train_student", spy)
    cfg = _config(teacher, tiny_data, tmp_path / "c", n_students=2, init="3,1/0,2", dropout=0.0)
    distill(cfg)
    model = ShoalModel.from_pretrained(tmp_path / "c")
    assert model.meta["init_layers"] == [[3, 1], [0, 2]]
    assert seen and all(p == 0.0 for ps in seen.values() for p in ps)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dropout": 1.0}, r"dropout=1\.0 must be in \[0, 1\)"),
        ({"init": "0,1,2"}, r"\[0, 1, 2\]\] does not fit 2 student\(s\) of 2 layers"),
        ({"init": "0,1/1,2/2,3"}, r"one list of 2 teacher layers"),
        ({"init": "top"}, r"'top' is not 'bottom', 'spread', 'skip' or a layer plan"),
    ],
)
def test_bad_dropout_or_init_is_refused_before_any_work(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig(teacher=str(tmp_path), n_students=2, **kw)


def test_init_naming_a_layer_the_teacher_lacks_is_refused_before_its_outputs_are_cached(
    tmp_path, tiny_data, monkeypatch
):
    teacher = _deep_teacher(tmp_path)  # 4 layers: 0..3
    monkeypatch.setattr(teacher_outputs, "cache_teacher", lambda *a, **k: pytest.fail("cached"))
    with pytest.raises(ConfigError, match=r"names layers \[7\]; the teacher has 0..3"):
        distill(_config(teacher, tiny_data, tmp_path / "c", n_students=1, init="0,7"))


def test_bf16_runs_the_teacher_and_the_students_in_autocast_and_keeps_its_own_cache(
    tmp_path, tiny_teacher, tiny_data, monkeypatch
):
    from shoal.distill.objectives import AverageObjective

    seen: list[bool] = []
    real = AverageObjective.step

    def spy(self, b):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(self, b)

    monkeypatch.setattr(AverageObjective, "step", spy)
    cache = tmp_path / "cache"
    runs, logits = {}, {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_distill_config(
            tiny_teacher, tiny_data, tmp_path / precision, n_students=1, cache_dir=str(cache),
            precision=precision,
        )  # fmt: skip
        seen.clear()
        runs[precision] = distill(cfg)
        assert seen and set(seen) == {precision == "bf16"}
        (folder,) = cache.glob("depth*")
        logits[precision] = torch.load(folder / "logits.pt")
    # the fp32 outputs were not reused: the teacher ran again in bf16, close but not equal
    assert '"precision": "bf16"' in (folder / "teacher.json").read_text()
    assert logits["bf16"].dtype == torch.float32
    assert not torch.equal(logits["bf16"], logits["fp32"])
    torch.testing.assert_close(logits["bf16"], logits["fp32"], atol=0.05, rtol=0.05)
    assert [r["k"] for r in runs["bf16"]["prefix_accuracy"]] == [1]


def test_an_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"precision='fp16'; use one of auto, fp32, bf16"):
        DistillConfig(teacher=str(tmp_path), precision="fp16")
