"""Boosting arithmetic: Theorem 1's step size and the non-increasing loss."""

from __future__ import annotations

import pytest
import torch

from shoal.distill import boosting


def test_alpha_matches_the_closed_form_and_the_line_search():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(500, 16, generator=g, dtype=torch.float64)
    s = 0.3 * r + torch.randn(500, 16, generator=g, dtype=torch.float64)
    acc = boosting.AlphaAccumulator()
    for part_r, part_s in zip(r.split(128), s.split(128)):
        acc.add(part_r, part_s)
    # Theorem 1 with MSE: grad = -(2/n) r, L = shrinkage * 2/n.
    n = r.numel()
    for shrink in (1.0, 2.0):
        grad = -(2 / n) * r
        expected = -(grad * s).sum() / (shrink * (2 / n) * (s**2).sum())
        assert acc.alpha(shrink) == pytest.approx(float(expected), rel=1e-9)
    # At shrinkage 1 it is the exact minimiser of ||r - a s||^2 over a.
    grid = torch.linspace(acc.alpha() - 0.1, acc.alpha() + 0.1, 201, dtype=torch.float64)
    losses = [float(((r.double() - a * s.double()) ** 2).sum()) for a in grid]
    assert abs(float(grid[int(torch.tensor(losses).argmin())]) - acc.alpha()) <= 1e-3


@pytest.mark.parametrize("shrink", [0.75, 1.0, 3.0])
def test_adding_a_student_never_increases_the_boost_loss(shrink):
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(300, 8, generator=g, dtype=torch.float64)
    ensemble = torch.zeros_like(teacher)
    before = boosting.boost_loss(teacher, ensemble)
    for _ in range(5):
        # even a useless (random) student cannot hurt
        s = torch.randn(300, 8, generator=g, dtype=torch.float64)
        acc = boosting.AlphaAccumulator()
        acc.add(boosting.residual(teacher, ensemble), s)
        ensemble = ensemble + acc.alpha(shrink) * s
        after = boosting.boost_loss(teacher, ensemble)
        assert after <= before + 1e-7
        before = after


def test_zero_student_gets_zero_step_and_bad_shrinkage_is_refused():
    assert boosting.step_size(1.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="shrinkage"):
        boosting.step_size(1.0, 1.0, 0.0)
