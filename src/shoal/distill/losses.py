"""Distillation losses as plain functions.

All hidden-state losses are masked means over real tokens: padding never counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoal.problems import MULTI, REGRESSION, SINGLE


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens.

    Shape:
        pred, target: (B, L, H); mask: (B, L) with 1 for real tokens. Returns a scalar, the
        mean over real tokens and hidden units.
    """
    m = mask.to(pred.dtype)[..., None]
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


def residual_loss(
    student_out: torch.Tensor, residual: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Boosting: the student's output fits what the previous students left, ``T - b_{k-1}``.

    Shape:
        student_out, residual: (B, L, H); mask: (B, L).
    """
    return masked_mse(student_out, residual, mask)


def stacking_loss(
    projected: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Virtual stacking: the (projected) intermediate state imitates ``b_{k-1}``.

    Shape:
        projected, target: (B, L, H); mask: (B, L).
    """
    return masked_mse(projected, target, mask)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    problem_type: str = SINGLE,
) -> torch.Tensor:
    """The student's logits against the teacher's, by the head's problem type: KL(teacher ||
    student) of temperature-softened softmaxes (single-label); the binary cross-entropy of
    each label's softened sigmoid against the teacher's, averaged over labels (multi-label);
    the squared error of the values (regression, where the temperature does not apply).
    Softened terms are scaled by T^2 so their gradients keep their size.

    Shape:
        student_logits, teacher_logits: (B, C). Returns a scalar (batch mean).
    """
    t = temperature
    if problem_type == REGRESSION:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    if problem_type == MULTI:
        target = torch.sigmoid(teacher_logits.float() / t)
        return F.binary_cross_entropy_with_logits(student_logits.float() / t, target) * t * t
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, -1),
            F.log_softmax(teacher_logits / t, -1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def label_loss(
    logits: torch.Tensor, labels: torch.Tensor, problem_type: str = SINGLE
) -> torch.Tensor:
    """The gold labels' loss, as transformers computes it for each problem type: cross-entropy
    (single-label), per-label binary cross-entropy (multi-label), squared error (regression).

    Shape:
        logits: (B, C); labels: (B,) int64 class ids, (B, C) 0/1 rows or (B,) values.
    """
    if problem_type == REGRESSION:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    if problem_type == MULTI:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits, labels)


def consistency_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """R-Drop (Liang et al., 2021): symmetric KL between two dropout passes of one batch,
    ``(KL(p1 || p2) + KL(p2 || p1)) / 2``; both sides carry gradients.

    Shape:
        first, second: (B, C) logits of the same examples. Returns a scalar (batch mean).
    """
    a, b = F.log_softmax(first, -1), F.log_softmax(second, -1)
    kl_ab = F.kl_div(b, a, log_target=True, reduction="batchmean")  # KL(p_a || p_b)
    kl_ba = F.kl_div(a, b, log_target=True, reduction="batchmean")
    return (kl_ab + kl_ba) / 2


def relation_loss(
    student_in: torch.Tensor,
    teacher_in: torch.Tensor,
    student_layer: torch.nn.Module,
    teacher_layer: torch.nn.Module,
    mask: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """MiniLMv2's self-attention relations: for the query, key and value projections of a
    layer in turn, each head's scaled dot products between every pair of tokens, softmaxed
    over the keys; the KL divergence from the teacher's relations to the student's, averaged
    over the three, the heads and the real tokens.

    Shape:
        student_in, teacher_in: (B, L, H), the inputs of the two layers; mask: (B, L).
        ``*_layer`` have ``query``, ``key`` and ``value`` linear maps of H -> H.
    """
    b, n, h = student_in.shape
    d = h // heads
    keep = mask.to(torch.bool)
    drop = ~keep[:, None, None, :]  # (B, 1, 1, L): padded keys

    def log_relations(layer: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
        t = getattr(layer, name)(x).float().view(b, n, heads, d).transpose(1, 2)
        scores = (t @ t.transpose(-1, -2)) / d**0.5
        return F.log_softmax(scores.masked_fill(drop, torch.finfo(scores.dtype).min), dim=-1)

    rows = keep[:, None, :, None].float()  # real query tokens
    total = student_in.new_zeros((), dtype=torch.float32)
    for name in ("query", "key", "value"):
        log_s = log_relations(student_layer, name, student_in)
        with torch.no_grad():
            log_t = log_relations(teacher_layer, name, teacher_in)
        kl = (log_t.exp() * (log_t - log_s)).masked_fill(drop, 0.0).sum(-1, keepdim=True)
        total = total + (kl * rows).sum() / (rows.sum() * heads).clamp_min(1.0)
    return total / 3
