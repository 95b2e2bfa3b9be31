"""Boosting arithmetic: residual targets, the step size alpha and the running ensemble.

With ``L_boost(T, B) = mean((T - B)^2)`` over n real-token units, the gradient at
``B_{k-1}`` is ``-(2/n) r_k`` with ``r_k = T - B_{k-1}``, and the loss is L-smooth with
``L_0 = 2/n``. Theorem 1's step ``alpha_k = -<grad, S_k> / (L ||S_k||^2)`` with
``L = shrinkage * L_0`` is therefore ``<r_k, S_k> / (shrinkage * ||S_k||^2)``: the exact line
search at ``shrinkage = 1``, smaller steps above it. For any ``shrinkage >= 1/2`` the loss
cannot increase: ``||r - a S||^2 = ||r||^2 - (2/s - 1/s^2) <r,S>^2 / ||S||^2``.
"""

from __future__ import annotations

import torch


def residual(teacher: torch.Tensor, ensemble: torch.Tensor) -> torch.Tensor:
    """``r_k = T - b_{k-1}``, the part of the teacher the ensemble has not explained.

    Shape:
        teacher, ensemble: (..., H). Returns float32 of the same shape.
    """
    return teacher.float() - ensemble.float()


class AlphaAccumulator:
    """Accumulates ``<r, S>`` and ``||S||^2`` over the training set, batch by batch."""

    def __init__(self) -> None:
        self.dot = 0.0
        self.sq = 0.0

    def add(self, resid: torch.Tensor, student: torch.Tensor) -> None:
        """Add one batch of real-token rows.

        Shape:
            resid, student: (n_tokens, H), padding already removed.
        """
        self.dot += float((resid.double() * student.double()).sum())
        self.sq += float((student.double() ** 2).sum())

    def alpha(self, shrinkage: float = 1.0) -> float:
        """Theorem 1's step size (see the module docstring)."""
        return step_size(self.dot, self.sq, shrinkage)


def step_size(dot: float, sq: float, shrinkage: float = 1.0) -> float:
    """``alpha = <r, S> / (shrinkage * ||S||^2)``; 0 for a student that outputs nothing."""
    if shrinkage <= 0:
        raise ValueError(f"shrinkage={shrinkage} must be > 0")
    return 0.0 if sq == 0.0 else dot / (shrinkage * sq)


def boost_loss(teacher: torch.Tensor, ensemble: torch.Tensor) -> float:
    """``L_boost``: mean squared error between teacher and ensemble over real-token rows."""
    return float(((teacher.double() - ensemble.double()) ** 2).mean())
