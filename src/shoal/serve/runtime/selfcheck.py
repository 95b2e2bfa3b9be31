"""The model self-check: a fixed probe through every prefix k of the runtime that will serve.

A cohort whose weights are damaged (a NaN or an inf in ``model.safetensors``) loads and runs,
and then every answer is garbage or a 500. So before it serves, ``build_app`` runs a probe --
a fixed text and a fixed pair (the second segment has its own embeddings) -- through the same
runtime the server uses (in process or on the worker pool, torch or ONNX Runtime) at every
k = 1..N, and refuses a cohort whose logits at some k are not finite or not (rows, labels).
Prefixes run in order, so the first failing k names the student that brought the damage in:
prefix k - 1 was fine. The engine runs the same check again while ``/health`` reports failures,
to see the runtime recover without waiting for traffic.

Plain numpy, no torch: the runtime is anything with ``run_batch(Batch) -> (B, C) logits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shoal.errors import ModelError
from shoal.serve.batch import Batch
from shoal.serve.buffer import Item
from shoal.serve.encoder import TextEncoder, TokenizedInput

PROBE_TEXT = "a short probe text to check the model"
PROBE_PAIR = "and a second text, as a pair task sends"

CORRUPT_WEIGHTS = "the weights are corrupt: distil it again or restore model.safetensors"


class BatchRunner(Protocol):
    """What the check runs on: a ``Runtime``, a ``LocalRunner`` wrapper or a fake."""

    def run_batch(self, batch: Batch) -> Any: ...


class SelfCheckFailed(ModelError):
    """The cohort failed the self-check; ``problem`` says how, without paths (for /health)."""

    def __init__(self, cohort: str | Path, problem: str, fix: str) -> None:
        super().__init__(f"cohort {cohort}: {problem}; {fix}")
        self.problem = problem


def probe_inputs(encoder: TextEncoder) -> list[TokenizedInput]:
    """The probe text and the probe pair, tokenised (truncated to the served length)."""
    inputs = [encoder.encode(PROBE_TEXT, truncate=True)]
    inputs.append(encoder.encode(PROBE_TEXT, PROBE_PAIR, truncate=True))
    return inputs


def probe_batches(encoder: TextEncoder, n_students: int) -> list[Batch]:
    """The probe as one right-padded batch per prefix k = 1..N (list index k - 1).

    Shape:
        each batch (2, L): row 0 the text, row 1 the pair.
    """
    items = [Item(i, x.n_tokens, 0.0, payload=x) for i, x in enumerate(probe_inputs(encoder))]
    length = max(it.n_tokens for it in items)
    return [Batch.from_items(items, length, encoder.pad_id, k=k) for k in range(1, n_students + 1)]


def non_finite(values: np.ndarray) -> str:
    """'NaN', 'inf' or 'NaN and inf': what the non-finite entries of ``values`` are."""
    kinds = [
        name for name, hit in (("NaN", np.isnan(values)), ("inf", np.isinf(values))) if hit.any()
    ]
    return " and ".join(kinds) or "none"


def shape_problem(logits: np.ndarray, rows: int, n_labels: int | None = None) -> str | None:
    """Why ``logits`` is not (rows, n_labels) (any number of labels when None), or None."""
    if logits.ndim == 2 and logits.shape[0] == rows and n_labels in (None, logits.shape[1]):
        return None
    want = f"({rows}, {n_labels if n_labels is not None else 'labels'})"
    return f"logits of shape {tuple(logits.shape)} instead of {want}"


def self_check(
    runtime: BatchRunner, probe: Sequence[Batch], n_labels: int, cohort: str | Path
) -> None:
    """Run the probe at every k; ``SelfCheckFailed`` naming the first k whose forward pass
    raises or gives logits that are not finite or not (rows, n_labels).

    Args:
        probe: ``probe_batches``: one batch per k, in order.
        n_labels: the cohort's label count.
        cohort: the folder, for the message.
    """
    names = ("probe text", "probe pair")
    for batch in probe:
        k = batch.k
        try:
            logits = np.asarray(runtime.run_batch(batch), dtype=np.float32)
        except Exception as e:  # the runtime's own errors, whatever they are
            first = str(e).splitlines()[0] if str(e) else ""
            raise SelfCheckFailed(
                cohort,
                f"the forward pass at k={k} failed on the probe text ({type(e).__name__}"
                f"{': ' + first if first else ''})",
                "check that the cohort folder is complete: distil it again or restore it",
            ) from None
        shape = shape_problem(logits, batch.shape[0], n_labels)
        if shape is not None:
            raise SelfCheckFailed(
                cohort,
                f"the runtime gives {shape} on the probe at k={k} for the cohort's "
                f"{n_labels} labels",
                "the labels in config.json / shoal_meta.json do not match the head's weights: "
                "distil it again or restore the cohort folder",
            )
        bad_rows = [names[r] for r in range(logits.shape[0]) if not np.isfinite(logits[r]).all()]
        if bad_rows:
            who = f"student {k}" if k > 1 else "student 1 (or the shared embeddings or head)"
            raise SelfCheckFailed(
                cohort,
                f"{who} gives non-finite logits ({non_finite(logits)}) on the "
                f"{' and '.join(bad_rows)} at k={k}",
                CORRUPT_WEIGHTS,
            )
