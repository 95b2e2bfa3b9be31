"""Every supported teacher family: a one-student cohort that copies all of a tiny random
teacher's layers computes the teacher's logits, on single texts and padded pairs, one by one
and fused, after a save/load round trip and through ONNX Runtime."""

from __future__ import annotations

import inspect

import pytest
import torch

from shoal.errors import ModelError
from shoal.models.cohort import ShoalModel
from shoal.models.families import FAMILIES, family_of
from shoal.models.teacher import load_teacher
from tiny_fixtures import FAMILY_NAMES, make_family_teacher

LAYERS = 3
TEXTS = [
    "good movie",
    # long enough for MPNet's logarithmic relative-position buckets (distances past 8)
    " ".join(["the plot was very bad and sad but the film is nice"] * 4),
    "not so great",
]
PAIRS = ["a film", "the movie was awful", "fine"]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_teacher(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_family_teacher(folder, request.param, layers=LAYERS)
    teacher, tok = load_teacher(folder)
    return request.param, teacher.eval(), tok


def inputs(tok, pairs: list[str] | None) -> dict[str, torch.Tensor]:
    return dict(tok(TEXTS, pairs, padding=True, return_tensors="pt"))


def teacher_logits(teacher, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    takes_types = "token_type_ids" in inspect.signature(teacher.forward).parameters
    if takes_types and "token_type_ids" in batch:
        kw["token_type_ids"] = batch["token_type_ids"]
    with torch.no_grad():
        return teacher(**kw).logits


def cohort_logits(cohort: ShoalModel, batch: dict[str, torch.Tensor], **kw) -> torch.Tensor:
    with torch.no_grad():
        return cohort(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), **kw
        ).logits


def full_copy(teacher) -> ShoalModel:
    plan = ",".join(str(i) for i in range(LAYERS))
    return ShoalModel.from_teacher(teacher, 1, LAYERS, plan).eval()


@pytest.mark.parametrize("pairs", [None, PAIRS], ids=["single", "pairs"])
def test_full_copy_reproduces_the_teacher(family_teacher, pairs):
    family, teacher, tok = family_teacher
    batch = inputs(tok, pairs)
    assert int(batch["attention_mask"].eq(0).sum()) > 0  # the batch is padded
    ref = teacher_logits(teacher, batch)
    assert float(ref.std()) > 0.1  # logits far enough apart that a wrong copy shows
    cohort = full_copy(teacher)
    assert cohort.config.family == family
    torch.testing.assert_close(cohort_logits(cohort, batch), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(cohort_logits(cohort, batch, fused=True), ref, atol=1e-5, rtol=0)


def test_round_trip_and_onnx_runtime(family_teacher, tmp_path):
    from shoal.serve.runtime.runner import LocalRunner

    _, teacher, tok = family_teacher
    batch = inputs(tok, PAIRS)
    ref = teacher_logits(teacher, batch)
    full_copy(teacher).save_pretrained(tmp_path, tok)
    loaded = ShoalModel.from_pretrained(tmp_path)
    torch.testing.assert_close(cohort_logits(loaded, batch), ref, atol=1e-5, rtol=0)
    runner = LocalRunner(loaded, backend="onnxruntime", threads=1)
    ort = runner.run(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), 1)
    torch.testing.assert_close(ort, ref, atol=1e-5, rtol=0)


def test_students_differ_from_the_teacher_when_shallower(family_teacher):
    """A 1-layer student is not the 3-layer teacher: the equivalence above is not vacuous."""
    _, teacher, tok = family_teacher
    batch = inputs(tok, None)
    shallow = ShoalModel.from_teacher(teacher, 2, 1, "bottom").eval()
    diff = (cohort_logits(shallow, batch) - teacher_logits(teacher, batch)).abs().max()
    assert float(diff) > 1e-3


def test_every_named_family_is_registered():
    assert set(FAMILIES) == set(FAMILY_NAMES)


@pytest.mark.parametrize("model_type", ["deberta-v2", "albert", "gpt2", None])
def test_other_families_are_refused_by_name(model_type):
    with pytest.raises(ModelError) as e:
        family_of(model_type)
    message = str(e.value)
    assert repr(model_type) in message
    for name in FAMILY_NAMES:
        assert name in message


def test_int8_students_run_for_every_family(family_teacher):
    from shoal.serve.runtime.runner import LocalRunner

    _, teacher, tok = family_teacher
    batch = inputs(tok, PAIRS)
    cohort = ShoalModel.from_teacher(teacher, 2, 2, "skip").eval()
    args = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), 2)
    fp32 = LocalRunner(cohort, threads=1).run(*args)
    int8 = LocalRunner(cohort, backend="onnxruntime", dtype="int8", threads=1).run(*args)
    assert int8.shape == fp32.shape
    # weights quantized to 8 bits: close to float32, not equal to it
    assert float((int8 - fp32).abs().max()) < 0.1 * float(fp32.abs().max()) + 0.05
