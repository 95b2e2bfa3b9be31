"""Inference runtime: the cohort fused on one device, or spread over worker processes.

The engine calls :class:`Runtime` (``start`` / ``run_batch`` / ``cost_model`` / ``close``).
``allocation`` and ``config`` are plain data and pure functions; ``runner``, ``worker``,
``handle`` and ``pool`` own tensors, devices and processes; ``profile`` measures the cost model.

The names below are loaded on first use, so importing the plain-data modules (or this package)
does not load torch: the CLI and the deciding code can read a layout without paying for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.serve.errors import WorkerCrashed, WorkerError
    from shoal.serve.runtime.allocation import Slot, allocate, plan_slots, workers_for
    from shoal.serve.runtime.config import RuntimeConfig
    from shoal.serve.runtime.handle import WorkerStatus
    from shoal.serve.runtime.pool import WorkerPool
    from shoal.serve.runtime.profile import ProfileConfig, load_or_profile, profile_costs
    from shoal.serve.runtime.runner import LocalRunner
    from shoal.serve.runtime.runtime import Runtime

_HOMES = {
    "LocalRunner": "shoal.serve.runtime.runner",
    "ProfileConfig": "shoal.serve.runtime.profile",
    "Runtime": "shoal.serve.runtime.runtime",
    "RuntimeConfig": "shoal.serve.runtime.config",
    "Slot": "shoal.serve.runtime.allocation",
    "WorkerCrashed": "shoal.serve.errors",
    "WorkerError": "shoal.serve.errors",
    "WorkerPool": "shoal.serve.runtime.pool",
    "WorkerStatus": "shoal.serve.runtime.handle",
    "allocate": "shoal.serve.runtime.allocation",
    "load_or_profile": "shoal.serve.runtime.profile",
    "plan_slots": "shoal.serve.runtime.allocation",
    "profile_costs": "shoal.serve.runtime.profile",
    "workers_for": "shoal.serve.runtime.allocation",
}

__all__ = [
    "LocalRunner",
    "ProfileConfig",
    "Runtime",
    "RuntimeConfig",
    "Slot",
    "WorkerCrashed",
    "WorkerError",
    "WorkerPool",
    "WorkerStatus",
    "allocate",
    "load_or_profile",
    "plan_slots",
    "profile_costs",
    "workers_for",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` (PEP 562), once."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
