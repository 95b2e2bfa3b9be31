"""One padded batch as plain arrays: the record the engine hands the runtime.

The engine, which imports no torch, pads a plan's inputs into int64 numpy arrays; the runtime
turns them into tensors on its device, or sends them down a pipe to its worker processes (numpy
arrays cross a pipe without passing shared-memory file descriptors, as tensors would).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shoal.serve.buffer import Item
from shoal.serve.encoder import TokenizedInput


def encoded(item: Item) -> TokenizedInput:
    """The tokenised input an item carries (the engine puts one in every item it submits)."""
    assert isinstance(item.payload, TokenizedInput)
    return item.payload


@dataclass(frozen=True)
class Batch:
    """Right-padded inputs and the prefix of students to run them with.

    Invariants: ``input_ids`` is (B, L) int64 with B, L >= 1; ``attention_mask`` (1 on real
    tokens, 0 on padding) and ``token_type_ids`` have the same shape, or are None (every
    position real; a single segment). The runtime checks ``k`` against the cohort (1..N).

    Shape:
        input_ids, attention_mask, token_type_ids: (B, L).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray | None
    token_type_ids: np.ndarray | None
    k: int
    """Students to run: the first k of the cohort."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, L)``: rows and padded length."""
        rows, length = self.input_ids.shape
        return int(rows), int(length)

    @classmethod
    def from_items(cls, items: Sequence[Item], padded_length: int, pad_id: int, *, k: int) -> Batch:
        """Right-pad the items' tokens to ``padded_length`` (every item must fit in it)."""
        ids = np.full((len(items), padded_length), pad_id, dtype=np.int64)
        mask = np.zeros((len(items), padded_length), dtype=np.int64)
        types = np.zeros((len(items), padded_length), dtype=np.int64)
        for row, item in enumerate(items):
            enc = encoded(item)
            n = enc.n_tokens
            ids[row, :n] = enc.input_ids
            types[row, :n] = enc.token_type_ids
            mask[row, :n] = 1
        return cls(ids, mask, types, k)
