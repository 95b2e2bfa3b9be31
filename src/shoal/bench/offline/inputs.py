"""The benchmark's inputs: sentences of one length from a TSV split (or synthetic ids), no padding.

Batch 1 cycles through distinct sentences (a cache cannot keep one answer hot); the large
batch repeats them to the requested size. Without a data file the ids are synthetic, which
changes nothing about latency at a fixed length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.data import read_tsv
from shoal.errors import DataError


def equal_length_batches(
    tokenizer: Any, data: str, length: int | None, large: int
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor], str]:
    """Batch-1 inputs (distinct sentences) and one large batch, all exactly ``length`` tokens."""
    path = Path(data)
    sents: list[list[int]] = []
    if data:  # read_tsv names a missing or malformed file in its error
        sents = [tokenizer(text)["input_ids"] for text in read_tsv(path).texts]
    if sents:
        lens = sorted(len(s) for s in sents)
        length = length or lens[len(lens) // 2]
        chosen = [s for s in sents if len(s) == length] or [
            s[:length] for s in sents if len(s) >= length
        ]
        if not chosen:
            raise DataError(
                f"no sentence of {path} has {length} tokens or more (the longest has "
                f"{lens[-1]}); give --length {lens[-1]} or less, or leave --length out for "
                f"the median ({lens[len(lens) // 2]})"
            )
        source = f"{path} ({len(chosen)} sentences of {length} tokens)"
    else:
        length = length or 25
        rng = np.random.default_rng(0)
        chosen = [[101, *rng.integers(1000, 20000, length - 2).tolist(), 102] for _ in range(64)]
        source = f"synthetic ({length} tokens)"
    ids = torch.tensor(chosen, dtype=torch.long)

    def pack(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "input_ids": x,
            "attention_mask": torch.ones_like(x),
            "token_type_ids": torch.zeros_like(x),
        }

    rows = [pack(ids[i : i + 1]) for i in range(len(ids))]
    big = pack(ids[torch.arange(large) % len(ids)])
    return rows, big, source


def model_args(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, token_type_ids) of a batch, each (B, L), in call order."""
    return x["input_ids"], x["attention_mask"], x["token_type_ids"]
