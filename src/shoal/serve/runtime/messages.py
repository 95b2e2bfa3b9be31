"""What the pool and its worker processes say to each other over a pipe.

Every message is a small frozen dataclass of plain Python and numpy arrays: no torch tensors
cross the pipe, so no shared-memory file descriptors are passed around, and this module loads
no torch (a worker imports it before it pins itself and loads torch).

    parent -> worker   Run(req_id, batch, students)    compute the students' partial sum
                       Ping(req_id)
                       Stop()
    worker -> parent   Ready(info)                      once, after loading and warming up
                       Done(req_id, partial_sum, seconds)   (B, H) or (B, C) float32
                       Pong(req_id)
                       Failed(req_id, message)          the worker raised but stays alive

Every reply names the request it answers, so the parent can skip a late reply to a batch that
already failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.serve.batch import Batch


@dataclass(frozen=True)
class Run:
    """Compute ``students``' share of the prefix ``batch.k`` on ``batch``."""

    req_id: int
    batch: Batch
    students: tuple[int, ...]
    """Ascending ids, all held by the worker and all below ``batch.k``."""


@dataclass(frozen=True)
class Ping:
    """Answer with ``Pong(req_id)``: the worker is alive and its loop is free."""

    req_id: int


@dataclass(frozen=True)
class Stop:
    """Return from the worker's loop (the process exits)."""


@dataclass(frozen=True)
class Ready:
    """The cohort is loaded and warmed up; ``info`` has pid, device, cores, threads, students."""

    info: dict[str, Any]


@dataclass(frozen=True)
class Done:
    """The answer to ``Run``: the partial sum and the compute seconds inside the worker."""

    req_id: int
    partial_sum: np.ndarray
    """(B, H) float32, or (B, num_labels) for a cohort with a head per student."""
    seconds: float


@dataclass(frozen=True)
class Pong:
    """The answer to ``Ping``."""

    req_id: int


@dataclass(frozen=True)
class Failed:
    """The worker raised on request ``req_id`` (None: a message it could not read)."""

    req_id: int | None
    message: str
    """The traceback, or what was wrong with the message."""


ToWorker = Run | Ping | Stop
"""A message the parent sends."""
FromWorker = Ready | Done | Pong | Failed
"""A message a worker sends."""
