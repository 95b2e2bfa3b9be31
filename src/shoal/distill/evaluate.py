"""Run a classifier over an encoded split and score it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from shoal.data import EVAL_TOKENS, Encoded, iterate
from shoal.metrics import accuracy, f1_binary


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


def score(logits: torch.Tensor, labels: list[int]) -> dict[str, float]:
    """Accuracy, plus F1 of class 1 for binary tasks."""
    pred = logits.argmax(-1).tolist()
    out = {"accuracy": accuracy(pred, labels)}
    if logits.shape[-1] == 2:
        out["f1"] = f1_binary(pred, labels)
    return out
