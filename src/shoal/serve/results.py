"""What the engine hands back: one ``Prediction`` per input, one ``BatchRecord`` per batch.

Plain frozen records with no torch, shared by the engine, the HTTP routes and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """The answer to one input. ``scores`` are softmax probabilities by class id."""

    label_id: int
    scores: tuple[float, ...]
    logits: tuple[float, ...]
    k: int
    """Students that computed it."""
    queue_s: float
    """From submission to the start of its batch."""
    inference_s: float
    """Execution time of its batch."""
    batch_size: int
    truncated: bool


@dataclass(frozen=True)
class BatchRecord:
    """What one executed batch cost, for metrics."""

    size: int
    k: int
    padded_length: int
    real_tokens: int
    inference_s: float

    @property
    def padded_tokens(self) -> int:
        """Positions computed: ``size * padded_length``."""
        return self.size * self.padded_length


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed stably (the row maximum subtracted first)."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
