"""Inference runtime: the cohort fused on one device, or spread over worker processes.

The engine calls :class:`Runtime` (``start`` / ``execute`` / ``cost_model`` / ``close``).
``allocation`` and ``config`` are plain data and pure functions; ``runner``, ``worker`` and
``pool`` own tensors, devices and processes; ``profile`` measures the cost model.
"""

from shoal.serve.runtime.allocation import Slot, allocate, plan_slots, workers_for
from shoal.serve.runtime.config import RuntimeConfig
from shoal.serve.runtime.errors import WorkerCrashed, WorkerError
from shoal.serve.runtime.pool import WorkerPool, WorkerStatus
from shoal.serve.runtime.profile import ProfileConfig, load_or_profile, profile_costs
from shoal.serve.runtime.runner import LocalRunner
from shoal.serve.runtime.runtime import Runtime

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
