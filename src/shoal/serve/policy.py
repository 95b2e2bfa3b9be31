"""Adaptive student pruning: how many students to run, as a pure function of the load.

``decide(snapshot, state, config, cost) -> (k, state)`` is built from small helpers: the bounds
(operator floor, accuracy floor, per-request minimum), the target (the largest k whose drain
time fits the latency budget by the cost model, scaled by how much slower than profiled the
batches run now) and hysteresis (raise k only after the load has allowed it for ``up_hold_s``;
drop at once). No clock reads: the snapshot carries ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shoal.errors import ConfigError
from shoal.serve.costmodel import CostModel


@dataclass(frozen=True, kw_only=True)
class LoadSnapshot:
    """What the policy sees of the load at time ``now``."""

    now: float
    """Clock reading, seconds (any monotonic origin)."""
    pending_requests: int = 0
    """Requests waiting in the buffer."""
    pending_tokens: int = 0
    """Sum of their real (unpadded) lengths."""
    arrival_rate: float = 0.0
    """Recent arrivals, requests per second."""
    mean_tokens: float = 0.0
    """Mean length of recent arrivals (0 = unknown: the pending mean is used)."""
    max_min_k: int = 1
    """Largest per-request minimum number of students among pending requests."""
    pending_batches: tuple[tuple[int, int], ...] = ()
    """``(n_items, padded_length)`` of each batch the buffer holds; when empty, pending work is
    estimated from ``pending_requests`` and ``pending_tokens``."""
    max_batch_size: int = 64
    """Most requests per batch (the buffer's ``max_batch_size``)."""
    max_batch_tokens: int = 4096
    """Most padded tokens per batch (the buffer's ``max_batch_tokens``)."""
    cost_scale: float = 1.0
    """How much slower batches run now than the cost model predicts (online calibration; 1:
    as profiled). The drain time is multiplied by it."""


@dataclass(frozen=True)
class PolicyState:
    """The policy's memory between decisions."""

    k: int
    """Students in use."""
    since: float | None = None
    """When a change of k away from ``k`` was first allowed (None: no change pending)."""
    candidate: int | None = None
    """The k that the load has allowed continuously since ``since``."""


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Adaptive student pruning settings."""

    n_students: int
    """Students in the cohort (N): the largest k."""
    latency_target_s: float = 0.1
    """Target latency per request, seconds."""
    floor_k: int = 1
    """Fewest students ever used, whatever the load."""
    max_accuracy_drop: float | None = None
    """If set, accuracy points (0-100 scale) the pruned model may lose against the full cohort;
    needs ``prefix_accuracy``. Combined with ``floor_k`` by max."""
    prefix_accuracy: tuple[float, ...] = ()
    """Accuracy (0..1) of the first k students, for k = 1..N, as stored with the model."""
    up_hold_s: float = 1.0
    """How long the load must allow a higher k before k rises (hysteresis), seconds."""
    down_immediately: bool = True
    """Drop k as soon as the load demands it; if False, drops also wait ``up_hold_s``."""
    headroom: float = 0.8
    """Fraction of the latency target the pending work may take to drain, in (0, 1]."""
    concurrency: int = 1
    """Batches that execute at the same time (e.g. workers that each run whole batches)."""
    enabled: bool = True
    """False disables pruning: always N students (the fixed policy)."""

    def __post_init__(self) -> None:
        n = self.n_students
        if n < 1:
            raise ConfigError(f"n_students={n} must be at least 1")
        if not 1 <= self.floor_k <= n:
            raise ConfigError(f"floor_k={self.floor_k} must be in 1..n_students={n}")
        if not (math.isfinite(self.latency_target_s) and self.latency_target_s > 0):
            raise ConfigError(f"latency_target_s={self.latency_target_s} must be > 0 seconds")
        if not 0 < self.headroom <= 1:
            raise ConfigError(f"headroom={self.headroom} must be in (0, 1]; 0.8 is typical")
        if not (math.isfinite(self.up_hold_s) and self.up_hold_s >= 0):
            raise ConfigError(f"up_hold_s={self.up_hold_s} must be >= 0 seconds")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency={self.concurrency} must be at least 1")
        acc = self.prefix_accuracy
        if acc and len(acc) != n:
            raise ConfigError(
                f"prefix_accuracy has {len(acc)} values but n_students={n}; give one per prefix"
            )
        if any(not 0 <= a <= 1 for a in acc):
            raise ConfigError(f"prefix_accuracy={acc} must lie in 0..1 (fractions, not percent)")
        if self.max_accuracy_drop is not None:
            if self.max_accuracy_drop < 0:
                raise ConfigError(f"max_accuracy_drop={self.max_accuracy_drop} must be >= 0")
            if not acc:
                raise ConfigError(
                    f"max_accuracy_drop={self.max_accuracy_drop} needs prefix_accuracy; "
                    "load it from the model or drop the accuracy floor"
                )

    @property
    def effective_floor(self) -> int:
        """Fewest students allowed: ``floor_k`` combined with the accuracy floor."""
        if self.max_accuracy_drop is None:
            return self.floor_k
        return max(self.floor_k, accuracy_floor(self.prefix_accuracy, self.max_accuracy_drop))


def accuracy_floor(prefix_accuracy: tuple[float, ...], max_drop_points: float) -> int:
    """Smallest k whose accuracy is within ``max_drop_points`` (0-100 scale) of the full cohort.

    Small tolerance so that a drop of exactly ``max_drop_points`` is allowed despite rounding.
    """
    full = prefix_accuracy[-1]
    for k, acc in enumerate(prefix_accuracy, start=1):
        if 100.0 * (full - acc) <= max_drop_points + 1e-9:
            return k
    return len(prefix_accuracy)


def initial_state(config: PolicyConfig) -> PolicyState:
    """Start with the whole cohort."""
    return PolicyState(k=config.n_students)


def bounds(snapshot: LoadSnapshot, config: PolicyConfig) -> tuple[int, int]:
    """``(lo, hi)``: k may not go below the floors nor a pending request's minimum."""
    hi = config.n_students
    lo = min(hi, max(config.effective_floor, snapshot.max_min_k))
    return lo, hi


def _batch_size(length: float, snapshot: LoadSnapshot) -> int:
    # Full batches under both buffer limits, for requests of this length.
    return max(
        1, min(snapshot.max_batch_size, snapshot.max_batch_tokens // max(1, math.ceil(length)))
    )


def drain_time(k: int, snapshot: LoadSnapshot, config: PolicyConfig, cost: CostModel) -> float:
    """Seconds to run the pending work plus the arrivals expected within the latency target.

    Arrivals are costed at full batches: the best throughput the buffer reaches, which it does
    exactly when load is high, the regime where pruning matters.
    """
    s = snapshot
    pending_mean = s.pending_tokens / s.pending_requests if s.pending_requests else 0.0
    if s.pending_batches:
        pending = sum(cost.cost(k, n, length) for n, length in s.pending_batches)
    elif s.pending_requests:
        b = _batch_size(pending_mean, s)
        full, rest = divmod(s.pending_requests, b)
        pending = full * cost.cost(k, b, pending_mean)
        if rest:
            pending += cost.cost(k, rest, pending_mean)
    else:
        pending = 0.0
    expected = s.arrival_rate * config.latency_target_s
    arrivals = 0.0
    if expected > 0:
        length = s.mean_tokens or pending_mean or 1.0
        b = _batch_size(length, s)
        arrivals = expected / b * cost.cost(k, b, length)
    return (pending + arrivals) * s.cost_scale / config.concurrency


def target_k(
    snapshot: LoadSnapshot, config: PolicyConfig, cost: CostModel, lo: int, hi: int
) -> int:
    """Largest k in ``lo..hi`` that drains within ``headroom * latency_target_s``; ``lo`` when
    none does (the fastest allowed)."""
    budget = config.headroom * config.latency_target_s
    for k in range(hi, lo, -1):
        if drain_time(k, snapshot, config, cost) <= budget:
            return k
    return lo


def hysteresis(target: int, state: PolicyState, now: float, config: PolicyConfig) -> PolicyState:
    """Move toward ``target`` only once the load has allowed a change for the hold time.

    While a rise is pending, ``candidate`` keeps the smallest target seen, so k rises only to a
    value the load allowed the whole time (for a pending drop, the largest).
    """
    if target == state.k:
        return PolicyState(k=state.k)
    up = target > state.k
    since, previous = state.since, state.candidate
    if since is not None and previous is not None and (previous > state.k) == up:
        cand = min(previous, target) if up else max(previous, target)
    else:
        since, cand = now, target
    hold = config.up_hold_s if up or not config.down_immediately else 0.0
    if now - since >= hold:
        return PolicyState(k=cand)
    return PolicyState(k=state.k, since=since, candidate=cand)


def decide(
    snapshot: LoadSnapshot, state: PolicyState, config: PolicyConfig, cost: CostModel
) -> tuple[int, PolicyState]:
    """Number of students to use now, and the state to pass to the next call."""
    if not config.enabled:
        return config.n_students, PolicyState(k=config.n_students)
    lo, hi = bounds(snapshot, config)
    if not lo <= state.k <= hi:
        # Bounds are hard limits (a request asked for more students, the floor changed):
        # apply them at once, outside hysteresis.
        state = PolicyState(k=min(max(state.k, lo), hi))
    new = hysteresis(target_k(snapshot, config, cost, lo, hi), state, snapshot.now, config)
    return new.k, new
