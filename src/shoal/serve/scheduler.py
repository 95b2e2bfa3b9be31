"""The scheduler: buffer + pruning policy + arrival-rate estimate, driven by the caller's clock.

The engine loop is: ``expire(now)`` (answer timed-out requests), ``next_plan(now)`` (a batch and
the number of students to run it with), execute, ``observe(plan, seconds)``, repeat;
``submit(item, now)`` as requests come.

Online calibration: the cost model is measured on an idle machine at start-up, but under load
batches can run slower (a load generator or other processes on the same cores, a profile that
missed per-batch overheads). ``observe`` keeps a running estimate of measured over predicted
batch time, and the policy scales its drain-time estimates by it.

No clock reads and no threads here: the engine serialises calls.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from shoal.errors import ConfigError
from shoal.serve.buffer import (
    Buffer,
    BufferConfig,
    FifoBuffer,
    Item,
    LengthAwareBuffer,
    check_room,
)
from shoal.serve.costmodel import CostModel
from shoal.serve.errors import BufferFull, InvalidRequest
from shoal.serve.policy import LoadSnapshot, PolicyConfig, PolicyState, decide, initial_state


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """Everything the scheduler decides with."""

    policy: PolicyConfig
    """Adaptive pruning settings."""
    buffer: BufferConfig = field(default_factory=BufferConfig)
    """How requests are grouped into batches."""
    buffer_kind: Literal["length_aware", "fifo"] = "length_aware"
    """The paper's tail-merge buffer, or the FIFO dynamic-batching baseline."""
    rate_window_s: float = 2.0
    """Sliding window over which the arrival rate and mean length are measured, seconds."""
    calibrate: bool = True
    """Scale the cost model by the measured/predicted time of recent batches (see module)."""
    calibration_batches: int = 16
    """Span of the running estimate, batches: each batch moves it by 2/(span+1) in log space."""
    capacity_follows_speed: bool = False
    """Shrink the buffer's capacity by the calibrated cost scale while batches run slower
    than profiled, so what is queued still drains within the same time (for a capacity
    derived from the latency target; never above the configured one)."""
    calibration_clip: float = 4.0
    """One batch's ratio is clipped to [1/clip, clip] before it counts, so a single stall (a
    page fault, a first-call warm-up) cannot swing the policy; the estimate stays in the same
    range."""

    def __post_init__(self) -> None:
        if not self.rate_window_s > 0:
            raise ConfigError(f"rate_window_s={self.rate_window_s} must be > 0 seconds")
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches={self.calibration_batches} must be at least 1")
        if not (math.isfinite(self.calibration_clip) and self.calibration_clip >= 1):
            raise ConfigError(
                f"calibration_clip={self.calibration_clip} must be >= 1 (1 turns calibration off)"
            )
        if self.buffer_kind not in ("length_aware", "fifo"):
            raise ConfigError(f"buffer_kind={self.buffer_kind!r} must be 'length_aware' or 'fifo'")


@dataclass(frozen=True)
class Plan:
    """One batch to execute. Invariants: ``items`` non-empty, in queue order;
    ``k >= item.min_k`` for every item; ``padded_length == max(item.n_tokens)``."""

    items: tuple[Item, ...]
    k: int
    padded_length: int
    bin: int

    @property
    def padded_tokens(self) -> int:
        return len(self.items) * self.padded_length

    @property
    def real_tokens(self) -> int:
        return sum(it.n_tokens for it in self.items)


@dataclass(frozen=True)
class SchedulerStats:
    """Counters since start, for metrics."""

    submitted: int = 0
    rejected: int = 0
    batches: int = 0
    requests: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    expired: int = 0
    cancelled: int = 0
    k_changes: int = 0
    observed: int = 0
    """Batches whose time went into the calibration."""


def make_buffer(kind: str, config: BufferConfig) -> Buffer:
    """The buffer named by ``SchedulerConfig.buffer_kind``."""
    if kind == "fifo":
        return FifoBuffer(config)
    return LengthAwareBuffer(config)


class Scheduler:
    """Holds pending requests and turns them into plans with an adaptive number of students."""

    def __init__(self, config: SchedulerConfig, cost: CostModel) -> None:
        self.config = config
        self.cost = cost
        self.buffer: Buffer = make_buffer(config.buffer_kind, config.buffer)
        self._state: PolicyState = initial_state(config.policy)
        self._arrivals: deque[tuple[float, int]] = deque()  # (time, n_tokens) in the window
        self._window_tokens = 0
        self._stats = SchedulerStats()
        self._log_scale = 0.0  # log of measured / predicted batch time

    def _count(self, **increments: int) -> None:
        s = self._stats
        self._stats = replace(s, **{name: getattr(s, name) + n for name, n in increments.items()})

    def _forget_before(self, now: float) -> None:
        start = now - self.config.rate_window_s
        while self._arrivals and self._arrivals[0][0] <= start:
            self._window_tokens -= self._arrivals.popleft()[1]

    @property
    def capacity(self) -> int:
        """Most pending requests (inputs) admitted now: the buffer's capacity, divided by the
        cost scale while batches run slower than profiled (``capacity_follows_speed``)."""
        configured = self.buffer.config.capacity
        if not self.config.capacity_follows_speed or self.cost_scale <= 1.0:
            return configured
        return max(1, math.floor(configured / self.cost_scale))

    def admit(self, n: int) -> bool:
        """Admission of a request of ``n`` inputs, queued whole or refused. True when it is
        larger than the capacity and so must be queued past it, which only an empty buffer
        allows (such a request could never fit otherwise); raises ``BufferFull`` (counted as
        ``n`` rejected) when the buffer is not empty."""
        if n <= self.capacity:
            return False
        if len(self.buffer):
            self._count(rejected=n)
            raise BufferFull(
                f"a request of {n} inputs is larger than the queue capacity "
                f"({self.capacity}) and is queued only when the queue is empty; retry later, "
                "send fewer inputs per request, or raise --queue-capacity"
            )
        return True

    def submit(self, item: Item, now: float, *, past_capacity: bool = False) -> None:
        """Queue a request (past the capacity when ``admit`` said so). Raises
        ``InvalidRequest`` or ``BufferFull`` (counted as rejected)."""
        n = self.config.policy.n_students
        if item.min_k > n:
            raise InvalidRequest(
                f"request {item.id} asks for min_k={item.min_k} students but the model has {n}"
            )
        # Count the arrival even if the buffer is full: the policy must see the offered load.
        self._forget_before(now)
        self._arrivals.append((now, item.n_tokens))
        self._window_tokens += item.n_tokens
        try:
            if not past_capacity:
                check_room(len(self.buffer), self.capacity)
            self.buffer.push(item, past_capacity=past_capacity)
        except BufferFull:
            self._count(rejected=1)
            raise
        self._count(submitted=1)

    def arrival_rate(self, now: float) -> float:
        """Requests per second over the last ``rate_window_s``."""
        self._forget_before(now)
        return len(self._arrivals) / self.config.rate_window_s

    def snapshot(self, now: float) -> LoadSnapshot:
        """The load as the policy sees it."""
        rate = self.arrival_rate(now)
        mean = self._window_tokens / len(self._arrivals) if self._arrivals else 0.0
        cfg = self.buffer.config
        return LoadSnapshot(
            now=now,
            pending_requests=len(self.buffer),
            pending_tokens=self.buffer.pending_tokens,
            arrival_rate=rate,
            mean_tokens=mean,
            max_min_k=max((it.min_k for it in self.buffer.items()), default=1),
            pending_batches=tuple(self.buffer.shapes()),
            max_batch_size=cfg.max_batch_size,
            max_batch_tokens=cfg.max_batch_tokens,
            cost_scale=self.cost_scale,
        )

    def decide(self, now: float) -> int:
        """Update and return the number of students the policy allows now."""
        k, state = decide(self.snapshot(now), self._state, self.config.policy, self.cost)
        if k != self._state.k:
            self._count(k_changes=1)
        self._state = state
        return k

    def next_plan(self, now: float) -> Plan | None:
        """The next batch to run, or None when nothing is ready. Call ``expire`` first so that
        timed-out requests are not run."""
        if not self.buffer.ready(now):
            return None
        k = self.decide(now)  # decided on the load including the batch about to leave
        pending = self.buffer.pop()
        if pending is None:
            return None
        items = tuple(pending.items)
        plan = Plan(
            items=items,
            k=max(k, *(it.min_k for it in items)),
            padded_length=pending.max_tokens,
            bin=pending.bin,
        )
        self._count(
            batches=1,
            requests=len(items),
            padded_tokens=plan.padded_tokens,
            real_tokens=plan.real_tokens,
        )
        return plan

    def observe(self, plan: Plan, seconds: float) -> None:
        """Fold the measured time of an executed plan into the cost calibration."""
        cfg = self.config
        if not cfg.calibrate or not (math.isfinite(seconds) and seconds > 0):
            return
        length = plan.padded_length if self.cost.padded else plan.real_tokens / len(plan.items)
        predicted = self.cost.cost(plan.k, len(plan.items), length)
        if predicted <= 0:
            return
        bound = math.log(cfg.calibration_clip)
        ratio = min(max(math.log(seconds / predicted), -bound), bound)
        weight = 2.0 / (cfg.calibration_batches + 1)
        self._log_scale += weight * (ratio - self._log_scale)
        self._count(observed=1)

    @property
    def cost_scale(self) -> float:
        """Measured over predicted batch time, recent batches (1 until a batch is observed)."""
        return math.exp(self._log_scale)

    def expire(self, now: float) -> list[Item]:
        """Remove and return the pending requests whose deadline has passed."""
        expired = self.buffer.expire(now)
        self._count(expired=len(expired))
        return expired

    def cancel(self, item_id: int) -> bool:
        """Remove a pending request (e.g. the client went away). False if not pending."""
        removed = self.buffer.cancel(item_id)
        if removed:
            self._count(cancelled=1)
        return removed

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def current_k(self) -> int:
        """Students the policy chose at the last decision."""
        return self._state.k

    @property
    def state(self) -> PolicyState:
        return self._state

    @property
    def stats(self) -> SchedulerStats:
        return self._stats
