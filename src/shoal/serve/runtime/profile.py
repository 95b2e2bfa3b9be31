"""Measure ``cost(k, batch, padded_length)`` on this machine and cache it per machine and model.

The profile times the runtime's own ``run`` (embeddings, fused students, gather, head) on
synthetic inputs over a grid, taking the median of a few repeats after a warm-up, and returns
the scheduler's ``CostModel``. It is cached as JSON, keyed by a hash of the machine (CPU model,
cores, torch version, GPU), the cohort's shape and the runtime layout, so a restart on the same
machine loads it instead of measuring again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shoal.errors import ConfigError
from shoal.files import write_json_atomic
from shoal.serve.costmodel import CostModel
from shoal.serve.runtime.allocation import available_cores
from shoal.types import token_limit

log = logging.getLogger(__name__)

PROFILE_VERSION = 1
"""Bump when what is measured changes, so old caches are not reused."""


class Runnable(Protocol):
    """What is profiled: a ``LocalRunner`` or a ``WorkerPool``."""

    @property
    def n_students(self) -> int: ...

    def run(self, input_ids: Any, attention_mask: Any, token_type_ids: Any, k: int) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """The grid measured at start-up."""

    ks: tuple[int, ...] | None = None
    """Numbers of students to measure; None: every k up to 6, else 1, N and four between
    (the cost model is linear in k between measured points)."""
    batches: tuple[int, ...] = (1, 8, 32)
    """Batch sizes."""
    lengths: tuple[int, ...] = (16, 32, 64, 128)
    """Padded lengths in tokens (capped at the model's maximum positions)."""
    repeats: int = 3
    """Timed runs per point, after one warm-up; the median is kept."""

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"repeats={self.repeats} must be >= 1")
        for name in ("batches", "lengths"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ConfigError(f"{name}={values} must be a non-empty tuple of values >= 1")

    def resolve_ks(self, n_students: int) -> tuple[int, ...]:
        """The measured k values for a cohort of ``n_students``."""
        if self.ks is not None:
            bad = [k for k in self.ks if not 1 <= k <= n_students]
            if bad:
                raise ConfigError(f"profile ks {bad} are outside 1..{n_students}")
            return tuple(sorted(set(self.ks)))
        if n_students <= 6:
            return tuple(range(1, n_students + 1))
        return tuple(sorted({round(1 + i * (n_students - 1) / 5) for i in range(6)}))


def profile_costs(
    target: Runnable,
    ks: Sequence[int],
    batches: Sequence[int],
    lengths: Sequence[int],
    repeats: int = 3,
    *,
    vocab_size: int = 1000,
    seed: int = 0,
) -> CostModel:
    """Time ``target.run`` over the grid ks x batches x lengths (median of ``repeats``).

    Inputs are random token ids with no padding, so ``length`` is the padded length.
    """
    rng = np.random.default_rng(seed)
    points = []
    for k in ks:
        for b in batches:
            for n in lengths:
                ids = rng.integers(1, max(2, vocab_size), size=(b, n), dtype=np.int64)
                mask = np.ones_like(ids)
                types = np.zeros_like(ids)
                target.run(ids, mask, types, k)  # warm-up: allocator, kernel selection
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    target.run(ids, mask, types, k)  # returns CPU logits: device synchronised
                    times.append(time.perf_counter() - t0)
                points.append((int(k), int(b), int(n), statistics.median(times)))
    return CostModel(points=tuple(points), padded=True)


def machine_fingerprint(device: str) -> dict[str, Any]:
    """What makes timings from one machine invalid on another."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": len(available_cores()),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile_key(
    machine: Mapping[str, Any],
    model_config: Mapping[str, Any],
    layout: Mapping[str, Any],
    grid: Mapping[str, Any],
) -> str:
    """A short stable hash of everything the timings depend on."""
    blob = json.dumps(
        {
            "v": PROFILE_VERSION,
            "machine": machine,
            "model": model_config,
            "layout": layout,
            "grid": grid,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    """``~/.cache/shoal/profiles`` (resolved when called, never at import)."""
    return Path.home() / ".cache" / "shoal" / "profiles"


def load_or_profile(
    target: Runnable,
    *,
    model_config: Mapping[str, Any],
    layout: Mapping[str, Any],
    device: str,
    profile: ProfileConfig = ProfileConfig(),
    cache_dir: str | Path | None = None,
    refresh: bool = False,
) -> CostModel:
    """The cached cost model for this machine, model and layout, measuring it when missing.

    Args:
        model_config: the cohort's config (shape only; weights do not change latency).
        layout: the runtime layout (``asdict(RuntimeConfig)``).
        cache_dir: where profiles live; None for :func:`default_cache_dir`.
        refresh: measure even when a cached profile exists.
    """
    max_len = token_limit(dict(model_config))
    ks = profile.resolve_ks(target.n_students)
    lengths = tuple(sorted({min(n, max_len) for n in profile.lengths}))
    batches = tuple(sorted(set(profile.batches)))
    grid = {
        "ks": ks,
        "batches": batches,
        "lengths": lengths,
        "repeats": profile.repeats,
    }
    machine = machine_fingerprint(device)
    key = profile_key(machine, model_config, layout, grid)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.json"
    if path.is_file() and not refresh:
        try:
            return CostModel.from_json(json.loads(path.read_text())["cost_model"])
        except (ConfigError, KeyError, json.JSONDecodeError, TypeError) as e:
            log.warning("ignoring unreadable profile %s (%s); measuring again", path, e)
    log.info(
        "profiling %d points on %s (cached at %s)",
        len(ks) * len(batches) * len(lengths),
        device,
        path,
    )
    t0 = time.perf_counter()
    model = profile_costs(
        target,
        ks,
        batches,
        lengths,
        profile.repeats,
        vocab_size=int(model_config.get("vocab_size", 1000)),
    )
    record = {
        "key": key,
        "machine": machine,
        "model": dict(model_config),
        "layout": dict(layout),
        "grid": grid,
        "seconds": time.perf_counter() - t0,
        "cost_model": model.to_json(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record, indent=1, default=str)  # a concurrent start never reads half
    return model
