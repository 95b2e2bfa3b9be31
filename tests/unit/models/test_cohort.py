"""The cohort model: fused vs one-by-one, teacher copying, persistence, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

from shoal.errors import ConfigError, ModelError
from shoal.models.cohort import ShoalModel
from shoal.models.layer_plan import layer_plan


def _cohort(teacher_dir, n=3, m=2, init="spread", per_student=False, combine="sum") -> ShoalModel:
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    model = ShoalModel.from_teacher(teacher, n, m, init, head_per_student=per_student).eval()
    if combine != "sum":
        state = model.state_dict()
        model = ShoalModel(replace(model.config, combine=combine)).eval()
        model.load_state_dict(state)
    with torch.no_grad():  # distinct alphas and perturbed students, as after distillation
        model.alpha.copy_(torch.tensor([1.0, 0.6, 0.3][:n]))
        for s in model.students:
            for p in s.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model


def _batch(teacher_dir, texts, pairs=None):
    tok = BertTokenizerFast.from_pretrained(teacher_dir)
    return dict(tok(texts, pairs, padding=True, return_tensors="pt"))


def _naive_logits(model: ShoalModel, batch, k: int) -> torch.Tensor:
    """Float64 reference: every student separately, no fusing, no first-token shortcut."""
    m64 = ShoalModel(model.config).double().eval()
    m64.load_state_dict(model.state_dict())
    out = m64(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], k)
    return out.logits


TEXTS = ["good movie", "the plot was very very bad and sad", "a", "not so great but fine film"]


@pytest.mark.parametrize("combine", ["sum", "mean"])
@pytest.mark.parametrize("per_student", [False, True])
@pytest.mark.parametrize("pairs", [None, ["the film", "bad", "good good good good", "so"]])
def test_fused_matches_one_by_one_for_every_k(tiny_teacher, pairs, per_student, combine):
    model = _cohort(tiny_teacher, per_student=per_student, combine=combine)
    batch = _batch(tiny_teacher, TEXTS, pairs)
    assert batch["attention_mask"].min() == 0  # padding present
    with torch.no_grad():
        for k in range(1, model.n_students + 1):
            ref = _naive_logits(model, batch, k)
            slow = model(**batch, k=k).logits.double()
            fast = model(**batch, k=k, fused=True).logits.double()
            tol = 4 * (slow - ref).abs().max().item() + 1e-6  # fp32 error of a naive path
            assert (fast - ref).abs().max().item() <= tol
        prefix = model.prefix_logits(**batch)
        for k in range(1, model.n_students + 1):
            torch.testing.assert_close(
                prefix[k - 1], model(**batch, k=k).logits, atol=1e-5, rtol=1e-4
            )


@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_partial_sums_of_disjoint_groups_add_up(tiny_teacher, combine):
    for per_student in (False, True):
        model = _cohort(tiny_teacher, per_student=per_student, combine=combine)
        batch = _batch(tiny_teacher, TEXTS)
        with torch.no_grad():
            x, mask = model.embed(
                **{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            )
            states = model.fused_students()(x, mask, 3)
            whole = model.finish(model.students_sum(states, [0, 1, 2], 3))
            split = model.finish(
                model.students_sum(states[:1], [0], 3) + model.students_sum(states[1:], [1, 2], 3)
            )
        torch.testing.assert_close(whole, split, atol=1e-5, rtol=1e-5)


def test_mean_combine_reads_the_average_of_the_first_k_students(tiny_teacher):
    model = _cohort(tiny_teacher, combine="mean")
    batch = _batch(tiny_teacher, TEXTS)
    with torch.no_grad():
        out = model(**batch, return_students=True)
        assert out.student_states is not None
        first = [s[-1][:, 0] for s in out.student_states]  # each student's first-token state
        for k in range(1, 4):
            a = model.alpha[:k]
            expected = model.head(sum(a[i] * first[i] for i in range(k)) / k)
            torch.testing.assert_close(model(**batch, k=k).logits, expected)
            torch.testing.assert_close(
                model(**batch, k=k, fused=True).logits, expected, atol=1e-5, rtol=1e-4
            )


def test_padding_does_not_change_a_row(tiny_teacher):
    model = _cohort(tiny_teacher)
    alone = _batch(tiny_teacher, ["good movie"])
    padded = _batch(tiny_teacher, ["good movie", "the plot was very very bad and sad indeed"])
    with torch.no_grad():
        a = model(**alone, fused=True).logits[0]
        b = model(**padded, fused=True).logits[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_cache_follows_weight_updates(tiny_teacher):
    model = _cohort(tiny_teacher)
    batch = _batch(tiny_teacher, TEXTS)
    with torch.no_grad():
        before = model(**batch, fused=True).logits
        model.students[0].layers[-1].ffn_norm.bias.add_(1.0)
        after = model(**batch, fused=True).logits
        ref = model(**batch).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-4)


def test_one_student_copied_from_teacher_reproduces_a_two_layer_teacher(tiny_teacher):
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher).eval()
    model = ShoalModel.from_teacher(teacher, 1, 2, "bottom").eval()
    batch = _batch(tiny_teacher, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).logits, teacher(**batch).logits, atol=1e-5, rtol=1e-4
        )


def test_save_load_round_trip_is_bit_exact(tiny_teacher, tmp_path):
    model = _cohort(tiny_teacher)
    model.meta["prefix_accuracy"] = [{"k": 1, "dev": 0.5}]
    tok = BertTokenizerFast.from_pretrained(tiny_teacher)
    model.save_pretrained(tmp_path / "c", tok)
    loaded = ShoalModel.from_pretrained(tmp_path / "c")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.meta == model.meta
    assert (tmp_path / "c" / "tokenizer.json").is_file()
    batch = _batch(tiny_teacher, TEXTS)
    with torch.no_grad():
        assert torch.equal(model(**batch, k=2).logits, loaded(**batch, k=2).logits)


@pytest.mark.parametrize("k", [0, 4, -1])
def test_k_outside_range_is_refused(tiny_teacher, k):
    model = _cohort(tiny_teacher)
    batch = _batch(tiny_teacher, TEXTS)
    with pytest.raises(ConfigError, match=r"outside 1\.\.3"):
        model(**batch, k=k)


def test_not_a_cohort_folder(tiny_teacher, tmp_path):
    with pytest.raises(ModelError, match="not a Shoal cohort"):
        ShoalModel.from_pretrained(tmp_path)
    with pytest.raises(ModelError, match="not a Shoal cohort"):
        ShoalModel.from_pretrained(tiny_teacher / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bad / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="'bert' model"):
        ShoalModel.from_pretrained(bad)


def test_layer_plans():
    assert layer_plan("bottom", 2, 2, 6) == [[0, 1], [0, 1]]
    assert layer_plan("spread", 4, 2, 6) == [[0, 1], [2, 3], [4, 5], [0, 1]]
    assert layer_plan("skip", 2, 2, 6) == [[2, 5], [2, 5]]
    assert layer_plan("skip", 1, 3, 6) == [[1, 3, 5]]
    assert layer_plan("skip", 1, 4, 6) == [[1, 2, 4, 5]]
    assert layer_plan("skip", 1, 6, 6) == [list(range(6))]
    with pytest.raises(ConfigError, match="layers \\[9\\]"):
        layer_plan([[0, 9]], 1, 2, 6)
    assert layer_plan("0,5", 2, 2, 6) == [[0, 5], [0, 5]]
    assert layer_plan("2,5/0,5", 2, 2, 6) == [[2, 5], [0, 5]]
    with pytest.raises(ConfigError, match="layers \\[7\\]"):
        layer_plan("0,7", 1, 2, 6)
    with pytest.raises(ConfigError, match=r"does not fit 3 student\(s\) of 2 layers"):
        layer_plan("2,5/0,5", 3, 2, 6)
    with pytest.raises(ConfigError, match="or a layer plan.*'0,5'"):
        layer_plan("0,x", 1, 2, 6)


def test_explicit_layer_plan_copies_those_teacher_layers(tiny_teacher):
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher)
    model = ShoalModel.from_teacher(teacher, 2, 1, "1/0")
    layers = teacher.bert.encoder.layer
    assert model.meta["init_layers"] == [[1], [0]]
    for student, t in zip(model.students, (1, 0)):
        assert torch.equal(student.layers[0].query.weight, layers[t].attention.self.query.weight)
