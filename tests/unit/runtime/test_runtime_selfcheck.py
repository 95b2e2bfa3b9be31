"""The model self-check: the probe at every k through a real in-process ``Runtime``, and the
problems it names (non-finite logits by student, wrong shapes, a runtime that raises)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

from shoal.models.cohort import ShoalModel
from shoal.serve.encoder import TextEncoder
from shoal.serve.runtime import LocalRunner, Runtime, RuntimeConfig
from shoal.serve.runtime.selfcheck import (
    SelfCheckFailed,
    non_finite,
    probe_batches,
    self_check,
    shape_problem,
)


def tiny_cohort(teacher_dir, n: int) -> ShoalModel:
    torch.manual_seed(0)
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir)
    return ShoalModel.from_teacher(teacher, n, 2, "spread").eval()


@pytest.fixture(scope="module")
def encoder(tiny_teacher) -> TextEncoder:
    return TextEncoder(BertTokenizerFast.from_pretrained(tiny_teacher), 32)


def runtime_of(model) -> Runtime:
    return Runtime(LocalRunner(model), RuntimeConfig(), None)


def test_probe_is_a_text_and_a_pair_at_every_k(encoder):
    batches = probe_batches(encoder, 3)
    assert [b.k for b in batches] == [1, 2, 3]
    first = batches[0]
    assert first.shape[0] == 2 and all(
        np.array_equal(b.input_ids, first.input_ids) for b in batches
    )
    assert first.token_type_ids is not None and first.attention_mask is not None
    assert first.token_type_ids[0].max() == 0 and first.token_type_ids[1].max() == 1  # the pair


def test_a_healthy_cohort_passes(tiny_teacher, encoder):
    model = tiny_cohort(tiny_teacher, n=3)
    self_check(runtime_of(model), probe_batches(encoder, 3), 2, "cohort-dir")


@pytest.mark.parametrize(
    ("student", "value", "named", "kind"),
    [
        (1, float("nan"), "student 2 gives non-finite logits (NaN)", "at k=2"),
        (2, float("inf"), "student 3 gives non-finite logits", "at k=3"),
        (0, float("nan"), "student 1 (or the shared embeddings or head)", "at k=1"),
    ],
)
def test_a_corrupt_student_is_named_by_the_first_failing_prefix(
    tiny_teacher, encoder, student, value, named, kind
):
    model = tiny_cohort(tiny_teacher, n=3)
    with torch.no_grad():
        model.students[student].layers[0].ffn_out.weight[0, 0] = value
    with pytest.raises(SelfCheckFailed) as caught:
        self_check(runtime_of(model), probe_batches(encoder, 3), 2, "runs/broken")
    message = str(caught.value)
    assert message.startswith("cohort runs/broken: ") and named in message and kind in message
    assert "restore model.safetensors" in message and "\n" not in message
    assert "runs/broken" not in caught.value.problem  # the part /health may show


class FixedRunner:
    """Answers every batch with ``logits(batch)``, or raises ``error``."""

    def __init__(self, logits=None, error: Exception | None = None) -> None:
        self.logits, self.error = logits, error

    def run_batch(self, batch):
        if self.error is not None:
            raise self.error
        return self.logits(batch)


def test_wrong_shapes_and_runtime_errors_are_refused_in_one_line(encoder):
    probe = probe_batches(encoder, 2)
    three_labels = FixedRunner(lambda b: np.zeros((b.shape[0], 3), np.float32))
    with pytest.raises(SelfCheckFailed, match=r"shape \(2, 3\) instead of \(2, 2\).* at k=1"):
        self_check(three_labels, probe, 2, "c")
    raising = FixedRunner(error=RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore"))
    with pytest.raises(SelfCheckFailed) as caught:
        self_check(raising, probe, 2, "c")
    assert "forward pass at k=1 failed" in str(caught.value)
    assert "RuntimeError: mat1 and mat2" in str(caught.value) and "more" not in str(caught.value)


def test_logit_problems_are_described():
    assert shape_problem(np.zeros((4, 2)), 4) is None
    assert shape_problem(np.zeros((4, 2)), 4, 2) is None
    assert shape_problem(np.zeros(4), 4) == "logits of shape (4,) instead of (4, labels)"
    assert shape_problem(np.zeros((5, 2)), 4, 2) == "logits of shape (5, 2) instead of (4, 2)"
    assert non_finite(np.array([np.nan, 1.0])) == "NaN"
    assert non_finite(np.array([np.inf, -np.inf])) == "inf"
    assert non_finite(np.array([np.nan, np.inf])) == "NaN and inf"
