"""Errors of the runtime's worker processes."""

from __future__ import annotations

from shoal.errors import ShoalError


class WorkerCrashed(ShoalError, RuntimeError):
    """A worker process died or stopped answering; the batch it held failed.

    The worker has been restarted by the time this is raised, so the next batch can run.
    """


class WorkerError(ShoalError, RuntimeError):
    """A worker raised while running a batch (bad input, out of memory); it is still alive."""
