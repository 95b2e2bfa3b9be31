"""Loss functions ignore padding and agree with their definitions."""

from __future__ import annotations

import torch

from shoal.distill import losses


def test_masked_mse_ignores_padding():
    pred = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    target[1, 2] = 100.0  # padding position: must not count
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert losses.masked_mse(pred, target, mask).item() == 1.0


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.tensor([[2.0, -1.0], [0.5, 0.1]])
    assert losses.kd_loss(a, a, 2.0).abs().item() < 1e-7
    assert losses.kd_loss(a, a.flip(-1), 2.0).item() > 0.1
