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


def test_consistency_loss_is_the_symmetric_kl_of_the_two_passes():
    a = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.1, -0.3]])
    b = torch.tensor([[0.0, 1.0, 0.5], [0.5, 0.2, -0.1]])
    assert losses.consistency_loss(a, a).abs().item() < 1e-7
    pa, pb = a.softmax(-1), b.softmax(-1)
    # the definition, summed by hand: (KL(pa || pb) + KL(pb || pa)) / 2, mean over the batch
    kl_ab = (pa * (pa.log() - pb.log())).sum(-1).mean()
    kl_ba = (pb * (pb.log() - pa.log())).sum(-1).mean()
    expected = (kl_ab + kl_ba) / 2
    torch.testing.assert_close(losses.consistency_loss(a, b), expected)
    torch.testing.assert_close(losses.consistency_loss(b, a), expected)
