"""Run a classifier over an encoded split and score it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from shoal.data import EVAL_TOKENS, Encoded, iterate
from shoal.problems import SINGLE, metrics


@torch.inference_mode()
def predict_logits(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    enc: Encoded,
    batch_size: int = 128,
    pad_id: int = 0,
    desc: str | None = None,
) -> torch.Tensor:
    """Logits of every example, in the split's order; ``desc`` shows a progress bar. Batches
    hold up to ``batch_size`` rows and ``EVAL_TOKENS`` padded tokens.

    Shape:
        returns (N, num_labels) float32, on the CPU whatever device ``forward`` runs on.
    """
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    bar = tqdm(total=len(enc), desc=desc, unit="ex", dynamic_ncols=True, disable=desc is None)
    for batch in iterate(enc, batch_size, shuffle=False, pad_id=pad_id, max_tokens=EVAL_TOKENS):
        parts.append((batch["index"], forward(batch).float().cpu()))
        bar.update(len(batch["index"]))
    bar.close()
    index = torch.cat([i for i, _ in parts])
    logits = torch.cat([x for _, x in parts])
    out = torch.empty_like(logits)
    out[index] = logits
    return out


def score(
    logits: torch.Tensor,
    labels: list,
    problem_type: str = SINGLE,
    thresholds: list[float] | None = None,
) -> dict[str, float]:
    """The problem type's metrics (``shoal.problems.metrics``): accuracy, plus F1 of class 1
    for binary tasks; micro- and macro-F1 and exact-set accuracy for multi-label heads;
    Pearson, Spearman and the squared error for regression."""
    return metrics(logits.float().numpy(), labels, problem_type, thresholds)
