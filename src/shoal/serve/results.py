"""What the engine hands back: one ``Prediction`` per input, one ``BatchRecord`` per batch.

Plain frozen records with no torch, shared by the engine, the HTTP routes and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """The answer to one input. ``scores`` by class id are the head's (the engine's score
    function of the logits: softmax probabilities, per-label sigmoids, or the values)."""

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
