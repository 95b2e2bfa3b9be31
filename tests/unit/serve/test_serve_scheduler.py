"""Scheduler: plans respect min_k, arrival-rate estimate, expire/cancel, stats."""

from __future__ import annotations

import itertools
import random

import pytest

from shoal.errors import ConfigError
from shoal.serve.buffer import BufferConfig, Item
from shoal.serve.costmodel import CostModel
from shoal.serve.errors import BufferFull, InvalidRequest
from shoal.serve.policy import PolicyConfig
from shoal.serve.scheduler import Plan, Scheduler, SchedulerConfig

COST = CostModel(
    points=tuple(
        (k, b, n, 0.002 * k + 1e-5 * k * b * n / 16)
        for k, b, n in itertools.product((1, 4), (1, 64), (16, 512))
    )
)


def scheduler(**changes: object) -> Scheduler:
    policy = PolicyConfig(n_students=4, latency_target_s=0.1, up_hold_s=1.0)
    config = SchedulerConfig(policy=policy, **changes)  # type: ignore[arg-type]
    return Scheduler(config, COST)


def drain(s: Scheduler, now: float) -> list[Plan]:
    plans = []
    while (plan := s.next_plan(now)) is not None:
        plans.append(plan)
    return plans


@pytest.mark.parametrize("kind", ["length_aware", "fifo"])
@pytest.mark.parametrize("seed", range(10))
def test_plan_k_covers_every_min_k(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    s = scheduler(buffer_kind=kind, buffer=BufferConfig(max_batch_size=8))
    now, next_id, seen = 0.0, 0, 0
    for _ in range(300):
        now += rng.expovariate(2000.0)
        if rng.random() < 0.7:
            min_k = rng.choice([1, 1, 1, 2, 3, 4])
            s.submit(Item(next_id, rng.randint(1, 200), now, min_k=min_k), now)
            next_id += 1
        elif (plan := s.next_plan(now)) is not None:
            seen += len(plan.items)
            assert plan.k >= max(it.min_k for it in plan.items)
            assert 1 <= plan.k <= 4
            assert plan.padded_length == max(it.n_tokens for it in plan.items)
    seen += sum(len(p.items) for p in drain(s, now))
    assert seen == next_id == s.stats.requests


def test_high_min_k_request_gets_its_students_under_load() -> None:
    s = scheduler(buffer=BufferConfig(bin_width=16, max_batch_size=64))
    for i in range(500):  # a backlog that drives the policy to k = 1
        s.submit(Item(i, 500, 0.0), 0.0)
    first = s.next_plan(0.0)
    assert first is not None and first.k == 1
    s.submit(Item(9999, 5, 0.0, min_k=3), 0.0)
    plans = drain(s, 0.0)
    special = [p for p in plans if any(it.id == 9999 for it in p.items)]
    assert len(special) == 1 and special[0].k >= 3


def test_rejects_min_k_above_cohort() -> None:
    s = scheduler()
    with pytest.raises(InvalidRequest, match="min_k=5"):
        s.submit(Item(0, 10, 0.0, min_k=5), 0.0)
    assert len(s) == 0


def test_arrival_rate_sliding_window() -> None:
    s = scheduler(rate_window_s=2.0)
    for i in range(10):
        t = i / 10
        s.submit(Item(i, 10 + i, t), t)
    assert s.arrival_rate(1.0) == pytest.approx(5.0)
    assert s.arrival_rate(2.05) == pytest.approx(4.5)  # the arrival at t = 0 left the window
    assert s.snapshot(2.05).mean_tokens == pytest.approx(sum(range(11, 20)) / 9)
    assert s.arrival_rate(5.0) == 0.0
    assert s.snapshot(5.0).mean_tokens == 0.0


def test_snapshot_reflects_buffer() -> None:
    s = scheduler(buffer=BufferConfig(bin_width=16, max_batch_size=2, max_batch_tokens=999))
    for i, n in enumerate([3, 5, 7, 40]):
        s.submit(Item(i, n, 0.0, min_k=2 if i == 3 else 1), 0.0)
    snap = s.snapshot(0.0)
    assert snap.pending_requests == 4 and snap.pending_tokens == 55
    assert snap.pending_batches == ((2, 5), (1, 7), (1, 40))
    assert snap.max_min_k == 2
    assert (snap.max_batch_size, snap.max_batch_tokens) == (2, 999)


def test_expire_cancel_and_stats() -> None:
    s = scheduler(buffer=BufferConfig(bin_width=16))
    s.submit(Item(0, 10, 0.0, deadline=1.0), 0.0)
    s.submit(Item(1, 12, 0.0), 0.0)
    s.submit(Item(2, 14, 0.0), 0.0)
    assert s.expire(0.5) == []
    assert [it.id for it in s.expire(1.0)] == [0]
    assert s.cancel(2) and not s.cancel(2)
    plan = s.next_plan(1.0)
    assert plan is not None and [it.id for it in plan.items] == [1]
    assert s.next_plan(1.0) is None
    st = s.stats
    assert (st.submitted, st.expired, st.cancelled, st.batches, st.requests) == (3, 1, 1, 1, 1)
    assert (st.padded_tokens, st.real_tokens) == (12, 12)


def test_padded_and_real_token_counters() -> None:
    s = scheduler(buffer=BufferConfig(bin_width=16))
    for i, n in enumerate([3, 9]):
        s.submit(Item(i, n, 0.0), 0.0)
    (plan,) = drain(s, 0.0)
    assert (plan.padded_tokens, plan.real_tokens, plan.bin) == (18, 12, 0)
    assert (s.stats.padded_tokens, s.stats.real_tokens) == (18, 12)


def test_buffer_full_is_counted_and_raised() -> None:
    s = scheduler(buffer=BufferConfig(capacity=1))
    s.submit(Item(0, 10, 0.0), 0.0)
    with pytest.raises(BufferFull):
        s.submit(Item(1, 10, 0.0), 0.0)
    assert (s.stats.submitted, s.stats.rejected) == (1, 1)
    assert s.arrival_rate(0.0) == pytest.approx(1.0)  # offered load includes the rejected one


def test_a_request_larger_than_the_capacity_is_admitted_only_into_an_empty_buffer() -> None:
    s = scheduler(buffer=BufferConfig(capacity=2))
    assert s.admit(2) is False  # fits: queued under the capacity check
    assert s.admit(3) is True
    for i in range(3):
        s.submit(Item(i, 10, 0.0), 0.0, past_capacity=True)
    assert len(s) == 3
    with pytest.raises(BufferFull, match="larger than the queue capacity"):
        s.admit(3)
    with pytest.raises(BufferFull):
        s.submit(Item(3, 10, 0.0), 0.0)
    assert (s.stats.submitted, s.stats.rejected) == (3, 4)


def test_a_derived_capacity_shrinks_while_batches_run_slower_than_profiled() -> None:
    fixed = scheduler(buffer=BufferConfig(capacity=12))
    follows = scheduler(buffer=BufferConfig(capacity=12), capacity_follows_speed=True)
    for s in (fixed, follows):
        _observed(s, 3.0, times=200)  # batches ran 3x slower than profiled
    assert (fixed.capacity, follows.capacity) == (12, 4)
    for i in range(4):
        follows.submit(Item(100 + i, 10, 0.0), 0.0)
    with pytest.raises(BufferFull, match="capacity=4"):
        follows.submit(Item(104, 10, 0.0), 0.0)
    _observed(follows, 0.5, times=200)  # faster than profiled: never above the configured one
    assert follows.capacity == 12


def test_fifo_scheduler_waits_for_max_wait() -> None:
    s = scheduler(buffer_kind="fifo", buffer=BufferConfig(max_wait_s=0.5))
    s.submit(Item(0, 10, 0.0), 0.0)
    assert s.next_plan(0.1) is None
    plan = s.next_plan(0.5)
    assert plan is not None and plan.k == 4


def test_k_drops_under_backlog_then_recovers_after_hold() -> None:
    s = scheduler(buffer=BufferConfig(bin_width=16))
    assert s.current_k == 4
    for i in range(500):
        s.submit(Item(i, 500, 0.0), 0.0)
    plan = s.next_plan(0.0)
    assert plan is not None and plan.k == 1 and s.current_k == 1
    for i in range(500):  # the clients give up; no decision is taken while the queue empties
        s.cancel(i)
    assert s.decide(10.0) == 1  # idle now: the hold starts
    assert s.decide(10.9) == 1
    assert s.decide(11.0) == 4
    assert s.stats.k_changes == 2


PLAN = Plan(items=(Item(0, 32, 0.0),) * 8, k=2, padded_length=32, bin=1)


def _observed(s: Scheduler, ratio: float, times: int = 1) -> None:
    """Report ``times`` runs of ``PLAN`` that took ``ratio`` x the cost model's prediction."""
    for _ in range(times):
        s.observe(PLAN, ratio * COST.cost(2, 8, 32))


def test_calibration_follows_measured_over_predicted_time() -> None:
    s = scheduler()
    assert s.cost_scale == 1.0 and s.snapshot(0.0).cost_scale == 1.0
    _observed(s, 2.5, times=200)
    assert s.cost_scale == pytest.approx(2.5)
    assert s.snapshot(0.0).cost_scale == s.cost_scale
    assert s.stats.observed == 200
    _observed(s, 0.5, times=200)  # the other load went away: back below the profile
    assert s.cost_scale == pytest.approx(0.5)


def test_one_stall_moves_the_calibration_by_a_clipped_step() -> None:
    s = scheduler(calibration_batches=16, calibration_clip=4.0)
    _observed(s, 1000.0)
    assert s.cost_scale == pytest.approx(4.0 ** (2 / 17))
    s = scheduler(calibration_batches=1)  # span 1: the last batch alone, still clipped
    _observed(s, 1000.0)
    assert s.cost_scale == pytest.approx(4.0)


def test_calibration_off_or_unusable_times_leave_the_profile_alone() -> None:
    s = scheduler(calibrate=False)
    _observed(s, 3.0, times=10)
    assert s.cost_scale == 1.0 and s.stats.observed == 0
    s = scheduler()
    for seconds in (0.0, -1.0, float("nan"), float("inf")):
        s.observe(PLAN, seconds)
    assert s.cost_scale == 1.0 and s.stats.observed == 0


def test_slow_batches_lower_k_for_the_same_backlog() -> None:
    s = scheduler(buffer=BufferConfig(bin_width=16))
    for i in range(64):
        s.submit(Item(i, 100, 0.0), 0.0)
    profiled = s.decide(0.0)
    _observed(s, 4.0, times=100)
    assert s.decide(0.0) < profiled


def test_config_validation() -> None:
    policy = PolicyConfig(n_students=2)
    with pytest.raises(ConfigError, match="rate_window_s=0"):
        SchedulerConfig(policy=policy, rate_window_s=0)
    with pytest.raises(ConfigError, match="buffer_kind='lifo'"):
        SchedulerConfig(policy=policy, buffer_kind="lifo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="calibration_batches=0"):
        SchedulerConfig(policy=policy, calibration_batches=0)
    with pytest.raises(ConfigError, match="calibration_clip=0.5"):
        SchedulerConfig(policy=policy, calibration_clip=0.5)
