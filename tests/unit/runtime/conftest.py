"""A tiny trained-looking cohort (distinct alphas, perturbed students) for runtime tests."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

from shoal.models.cohort import ShoalModel

TEXTS = ["good movie", "the plot was very very bad and sad", "a", "not so great but fine film"]


def tiny_cohort(teacher_dir, n: int = 4, head_per_student: bool = False) -> ShoalModel:
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    torch.manual_seed(1)
    model = ShoalModel.from_teacher(
        teacher, n, 2, "spread", head_per_student=head_per_student
    ).eval()
    with torch.no_grad():
        model.alpha.copy_(torch.linspace(1.0, 0.3, n))
        for p in model.parameters():  # students (and per-student heads) differ
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP threads
    that spin-wait on each other make these tests 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=[False, True], ids=["shared-head", "head-per-student"])
def cohort(tiny_teacher, request) -> ShoalModel:
    """Boosting in hidden space (one head on b_k) and in logit space (a head per student)."""
    return tiny_cohort(tiny_teacher, head_per_student=request.param)


@pytest.fixture(scope="module")
def batch(tiny_teacher) -> dict[str, torch.Tensor]:
    tok = BertTokenizerFast.from_pretrained(tiny_teacher)
    out = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    assert out["attention_mask"].min() == 0  # padding present
    return out
