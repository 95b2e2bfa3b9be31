"""Classification metrics on plain lists (no torch)."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of equal pairs (0..1)."""
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"need equal, non-empty lists, got {len(pred)} and {len(gold)}")
    return sum(int(p == g) for p, g in zip(pred, gold)) / len(gold)


def f1_binary(pred: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (0..1); 0 when there is no true positive."""
    tp = sum(1 for p, g in zip(pred, gold) if p == positive and g == positive)
    fp = sum(1 for p, g in zip(pred, gold) if p == positive and g != positive)
    fn = sum(1 for p, g in zip(pred, gold) if p != positive and g == positive)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
