"""Seeded arrival processes and the requests they carry, with texts drawn from a real dataset.

Every arrival function returns sorted send offsets in seconds from the start of the run, in
``[0, duration)``. The same seed gives the same offsets, so two systems can be benchmarked on
exactly the same workload.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from shoal.errors import ConfigError, DataError
from shoal.types import Task

Kind = Literal["poisson", "gamma", "on_off", "ramp", "replay"]
KINDS: tuple[str, ...] = ("poisson", "gamma", "on_off", "ramp", "replay")


# --------------------------------------------------------------------------- arrivals


def poisson(rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrivals: exponential gaps with mean ``1 / rate``."""
    return gamma(rate, duration, 1.0, seed)


def gamma(rate: float, duration: float, cv: float, seed: int) -> list[float]:
    """Renewal process with gamma-distributed gaps (vLLM's burstiness knob).

    Args:
        rate: mean arrivals per second.
        duration: length of the window in seconds.
        cv: coefficient of variation of the gaps; 1 is Poisson, above 1 is burstier
            (clumps of requests and long silences), below 1 smoother.
        seed: seed of the generator.
    """
    _check_positive(rate=rate, duration=duration, cv=cv)
    rng = np.random.default_rng(seed)
    # Gamma(shape k, scale theta) has mean k*theta and CV 1/sqrt(k); pick both to match.
    shape = 1.0 / cv**2
    scale = 1.0 / (rate * shape)
    chunk = max(16, int(rate * duration * 1.1) + 16)
    out: list[np.ndarray] = []
    t = 0.0
    while t < duration:
        times = t + np.cumsum(rng.gamma(shape, scale, size=chunk))
        out.append(times)
        t = float(times[-1])
    times = np.concatenate(out)
    return times[times < duration].tolist()


def check_burst(burst_s: float, period_s: float) -> None:
    """Refuse a burst that is empty or longer than its period."""
    if not 0 < burst_s <= period_s:
        raise ConfigError(f"burst_s={burst_s} must be in (0, period_s={period_s}]")


def on_off(
    base_rate: float, burst_rate: float, period_s: float, burst_s: float, duration: float, seed: int
) -> list[float]:
    """Bursty Poisson arrivals: ``base_rate``, then ``burst_rate`` for the last ``burst_s`` of
    each ``period_s``.

    The burst closes each period (rather than opening it) so that a run starts in steady state
    and the plots show the system before, through and after a burst.
    """
    _check_positive(
        base_rate=base_rate, burst_rate=burst_rate, period_s=period_s, duration=duration
    )
    check_burst(burst_s, period_s)
    quiet = period_s - burst_s

    def rate_at(t: np.ndarray) -> np.ndarray:
        return np.where(np.mod(t, period_s) >= quiet, burst_rate, base_rate)

    return _thinned(rate_at, max(base_rate, burst_rate), duration, seed)


def ramp(start_rate: float, end_rate: float, duration: float, seed: int) -> list[float]:
    """Poisson arrivals whose rate changes linearly from ``start_rate`` to ``end_rate``."""
    _check_positive(duration=duration)
    if start_rate < 0 or end_rate < 0 or start_rate + end_rate == 0:
        raise ConfigError(
            f"ramp rates start_rate={start_rate}, end_rate={end_rate} must be >= 0 and not both 0"
        )

    def rate_at(t: np.ndarray) -> np.ndarray:
        return start_rate + (end_rate - start_rate) * t / duration

    return _thinned(rate_at, max(start_rate, end_rate), duration, seed)


def replay(csv_path: str | Path) -> list[float]:
    """Offsets from a CSV trace with a ``timestamp`` column (seconds, any origin).

    The trace is sorted and shifted so that its first request is sent at offset 0; absolute
    epoch timestamps therefore work as they are.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(
            f"replay trace {path} does not exist; pass a CSV file with a "
            f"'timestamp' column in seconds"
        )
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "timestamp" not in fields:
            raise DataError(
                f"{path} has columns {fields} but no 'timestamp' column; "
                f"add a header row 'timestamp' with one time in seconds per line"
            )
        reader.fieldnames = fields
        times: list[float] = []
        for lineno, row in enumerate(reader, start=2):
            raw = (row.get("timestamp") or "").strip()
            try:
                value = float(raw)
            except ValueError:
                raise DataError(
                    f"{path}:{lineno}: timestamp {raw!r} is not a number of seconds"
                ) from None
            if not math.isfinite(value):
                raise DataError(f"{path}:{lineno}: timestamp {raw!r} is not finite")
            times.append(value)
    if not times:
        raise DataError(f"{path} has a header but no timestamps")
    times.sort()
    return [t - times[0] for t in times]


def _thinned(
    rate_at: Callable[[np.ndarray], np.ndarray], max_rate: float, duration: float, seed: int
) -> list[float]:
    """Non-homogeneous Poisson arrivals by thinning (Lewis-Shedler): draw candidates at
    ``max_rate`` and keep each with probability ``rate_at(t) / max_rate``; exact for any
    rate bounded by ``max_rate``."""
    rng = np.random.default_rng(seed)
    candidates = np.asarray(poisson(max_rate, duration, int(rng.integers(2**31))))
    keep = rng.random(candidates.size) < rate_at(candidates) / max_rate
    return candidates[keep].tolist()


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name}={value} must be a positive finite number")


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, kw_only=True)
class WorkloadConfig:
    """What to send and when. The CLI maps ``shoal bench serve`` flags onto these fields."""

    kind: Kind = "poisson"
    """Arrival process: poisson, gamma, on_off (bursty), ramp or replay (CSV trace)."""
    rate: float = 10.0
    """Mean requests per second (poisson, gamma); the base rate for on_off; the start rate
    for ramp."""
    duration_s: float = 30.0
    """Length of the sending window in seconds (ignored by replay, which follows its trace)."""
    cv: float = 1.0
    """Coefficient of variation of the gaps for gamma; 1 is Poisson, larger is burstier."""
    burst_rate: float = 100.0
    """Requests per second inside a burst (on_off)."""
    period_s: float = 20.0
    """Length of one quiet-then-burst cycle in seconds (on_off)."""
    burst_s: float = 5.0
    """Length of the burst at the end of each period in seconds (on_off)."""
    end_rate: float = 100.0
    """Requests per second at the end of the window (ramp)."""
    replay: Path | None = None
    """CSV trace with a ``timestamp`` column in seconds (replay)."""
    seed: int = 0
    """Seeds both the arrival times and the choice of texts."""
    data: str = "default"
    """Data source for the texts, as ``shoal.data.load_task`` reads it."""
    split: str = "test"
    """Split whose texts and gold labels are sent."""
    max_requests: int | None = None
    """Keep at most this many requests (the earliest); None keeps all."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r} is not one of {list(KINDS)}")
        if self.kind == "replay" and self.replay is None:
            raise ConfigError("kind='replay' needs replay=<CSV path with a 'timestamp' column>")
        if self.max_requests is not None and self.max_requests < 1:
            raise ConfigError(f"max_requests={self.max_requests} must be >= 1 or None")

    def arrivals(self) -> list[float]:
        """The send offsets this configuration describes."""
        if self.kind == "poisson":
            return poisson(self.rate, self.duration_s, self.seed)
        if self.kind == "gamma":
            return gamma(self.rate, self.duration_s, self.cv, self.seed)
        if self.kind == "on_off":
            return on_off(
                self.rate, self.burst_rate, self.period_s, self.burst_s, self.duration_s, self.seed
            )
        if self.kind == "ramp":
            return ramp(self.rate, self.end_rate, self.duration_s, self.seed)
        assert self.replay is not None  # checked in __post_init__
        return replay(self.replay)


@dataclass(frozen=True)
class Request:
    """One request to send: when (seconds after the start), what, and the right answer."""

    offset_s: float
    text: str
    text_pair: str | None
    label: int


@dataclass(frozen=True)
class Workload:
    """Requests sorted by ``offset_s``, and the task's label names (index = class id)."""

    requests: list[Request]
    label_names: list[str]
    duration_s: float

    def __len__(self) -> int:
        return len(self.requests)


def build_workload(config: WorkloadConfig, *, task: Task | None = None) -> Workload:
    """Draw arrival times, then a text for each from the dataset split (with replacement).

    Args:
        config: the workload to build.
        task: an already loaded task; when None, ``config.data`` is loaded.

    Returns:
        The workload; its ``duration_s`` is the configured window, or the time of the last
        send for replay and when ``max_requests`` cut the arrivals short.
    """
    if task is None:
        # Imported here: shoal.data pulls in torch for tokenising, which the sender never needs.
        from shoal.data import load_task

        task = load_task(config.data)
    if config.split not in task.splits:
        raise ConfigError(
            f"split={config.split!r} is not in {config.data!r}; it has {sorted(task.splits)}"
        )
    data = task.splits[config.split]
    offsets = config.arrivals()
    duration = config.duration_s if config.kind != "replay" else (offsets[-1] if offsets else 0.0)
    if config.max_requests is not None and len(offsets) > config.max_requests:
        # The run now ends at the last kept send, so offered rates stay honest.
        offsets = offsets[: config.max_requests]
        duration = offsets[-1]
    # A separate stream from the arrivals', so the texts do not depend on how the arrival
    # process consumed its generator.
    rng = np.random.default_rng([config.seed, 1])
    picks = rng.integers(0, len(data), size=len(offsets)).tolist()
    pairs = data.text_pairs
    requests = [
        Request(
            offset_s=t,
            text=data.texts[i],
            text_pair=None if pairs is None else pairs[i],
            label=data.labels[i],
        )
        for t, i in zip(offsets, picks, strict=True)
    ]
    names = task.label_names or [str(i) for i in range(data.num_labels)]
    return Workload(requests=requests, label_names=list(names), duration_s=duration)
