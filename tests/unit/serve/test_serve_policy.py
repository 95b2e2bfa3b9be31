"""Adaptive pruning as a table of (load, state) -> decision."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from shoal.errors import ConfigError
from shoal.serve.costmodel import CostModel
from shoal.serve.policy import (
    LoadSnapshot,
    PolicyConfig,
    PolicyState,
    accuracy_floor,
    decide,
    drain_time,
    initial_state,
)


def seconds(k: int, b: int, n: int) -> float:
    # 0.00328 * k seconds for a full batch of 64 x 32 tokens.
    return 0.002 * k + 1e-5 * k * b * n / 16


COST = CostModel(
    points=tuple(
        (k, b, n, seconds(k, b, n))
        for k, b, n in itertools.product((1, 2, 3, 4), (1, 8, 64), (16, 128, 512))
    )
)
BASE = PolicyConfig(n_students=4, latency_target_s=0.1, headroom=0.8, up_hold_s=1.0)
ACCURACY = (0.80, 0.85, 0.865, 0.87)
# Drain budget 0.08 s; a full batch costs 0.00328 k s, so 10 batches allow k = 2 and 20 allow 1.
IDLE = LoadSnapshot(now=10.0)
MEDIUM = LoadSnapshot(now=10.0, pending_requests=640, pending_batches=((64, 32),) * 10)
HEAVY = LoadSnapshot(now=10.0, pending_requests=1280, pending_batches=((64, 32),) * 20)
FULL = PolicyState(k=4)
LOW = PolicyState(k=1)
RISING = PolicyState(k=1, since=10.0, candidate=4)


def at(snapshot: LoadSnapshot, now: float, **changes: object) -> LoadSnapshot:
    return replace(snapshot, now=now, **changes)  # type: ignore[arg-type]


CASES = [
    # (name, snapshot, state, config changes, expected state)
    ("idle keeps the full cohort", IDLE, FULL, {}, FULL),
    ("heavy backlog drops k at once", HEAVY, FULL, {}, LOW),
    ("medium backlog drops less", MEDIUM, FULL, {}, PolicyState(k=2)),
    # Calibration: batches running 2x slower than profiled turn the medium backlog heavy; 2x
    # faster make the heavy one medium.
    ("slow machine drops further", at(MEDIUM, 10.0, cost_scale=2.0), FULL, {}, LOW),
    ("fast machine drops less", at(HEAVY, 10.0, cost_scale=0.5), FULL, {}, PolicyState(k=2)),
    (
        "backlog estimated without batch shapes",
        LoadSnapshot(now=10.0, pending_requests=1280, pending_tokens=1280 * 32),
        FULL,
        {},
        LOW,
    ),
    (
        "burst of arrivals drops k",
        LoadSnapshot(now=10.0, arrival_rate=10_000.0, mean_tokens=32.0),
        FULL,
        {},
        LOW,
    ),
    (
        "moderate arrivals keep the full cohort",
        LoadSnapshot(now=10.0, arrival_rate=2_000.0, mean_tokens=32.0),
        FULL,
        {},
        FULL,
    ),
    ("operator floor respected", HEAVY, FULL, {"floor_k": 2}, PolicyState(k=2)),
    (
        "accuracy floor: k=3 is within 1 point of full",
        HEAVY,
        FULL,
        {"max_accuracy_drop": 1.0, "prefix_accuracy": ACCURACY},
        PolicyState(k=3),
    ),
    (
        "accuracy floor combined with floor_k by max",
        HEAVY,
        FULL,
        {"max_accuracy_drop": 10.0, "prefix_accuracy": ACCURACY, "floor_k": 2},
        PolicyState(k=2),
    ),
    ("per-request min_k respected", at(HEAVY, 10.0, max_min_k=3), FULL, {}, PolicyState(k=3)),
    ("min_k above N capped at N", at(HEAVY, 10.0, max_min_k=9), FULL, {}, FULL),
    (
        "min_k raises k at once, then a rise to N starts its hold",
        at(IDLE, 10.0, max_min_k=3),
        LOW,
        {},
        PolicyState(k=3, since=10.0, candidate=4),
    ),
    ("idle after burst: rise starts the hold", IDLE, LOW, {}, RISING),
    ("no rise before up_hold_s", at(IDLE, 10.9), RISING, {}, RISING),
    ("rise after up_hold_s", at(IDLE, 11.0), RISING, {}, FULL),
    (
        "rise only to what was allowed all along",
        at(IDLE, 11.0),
        PolicyState(k=1, since=10.0, candidate=2),
        {},
        PolicyState(k=2),
    ),
    (
        "pending rise narrowed by load",
        at(MEDIUM, 10.5),
        RISING,
        {},
        PolicyState(k=1, since=10.0, candidate=2),
    ),
    ("load back at current k cancels the rise", at(HEAVY, 10.5), RISING, {}, LOW),
    (
        "decrease during a pending rise is immediate",
        at(HEAVY, 10.5),
        PolicyState(k=2, since=10.0, candidate=4),
        {},
        LOW,
    ),
    ("zero hold rises at once", IDLE, LOW, {"up_hold_s": 0.0}, FULL),
    (
        "drops may also wait when configured",
        HEAVY,
        FULL,
        {"down_immediately": False},
        PolicyState(k=4, since=10.0, candidate=1),
    ),
    (
        "delayed drop happens after the hold",
        at(HEAVY, 11.0),
        PolicyState(k=4, since=10.0, candidate=1),
        {"down_immediately": False},
        LOW,
    ),
    ("disabled: always N", HEAVY, LOW, {"enabled": False}, FULL),
]


@pytest.mark.parametrize(
    ("snapshot", "state", "changes", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision_table(
    snapshot: LoadSnapshot,
    state: PolicyState,
    changes: dict[str, object],
    expected: PolicyState,
) -> None:
    config = replace(BASE, **changes)  # type: ignore[arg-type]
    k, new_state = decide(snapshot, state, config, COST)
    assert new_state == expected
    assert k == expected.k


def test_decide_is_pure() -> None:
    first = decide(HEAVY, FULL, BASE, COST)
    assert decide(HEAVY, FULL, BASE, COST) == first


def test_initial_state_is_full_cohort() -> None:
    assert initial_state(BASE) == PolicyState(k=4)


def test_drain_time_grows_with_k_and_load() -> None:
    assert drain_time(4, IDLE, BASE, COST) == 0.0
    assert drain_time(1, HEAVY, BASE, COST) == pytest.approx(20 * seconds(1, 64, 32))
    assert drain_time(2, HEAVY, BASE, COST) > drain_time(1, HEAVY, BASE, COST)
    slow = replace(HEAVY, cost_scale=1.5)
    assert drain_time(2, slow, BASE, COST) == pytest.approx(1.5 * drain_time(2, HEAVY, BASE, COST))
    two_workers = replace(BASE, concurrency=2)
    assert drain_time(2, HEAVY, two_workers, COST) == pytest.approx(
        drain_time(2, HEAVY, BASE, COST) / 2
    )


@pytest.mark.parametrize(
    ("drop", "expected"),
    [(0.0, 4), (0.5, 3), (1.0, 3), (2.0, 2), (6.9, 2), (7.0, 1), (100.0, 1)],
)
def test_accuracy_floor(drop: float, expected: int) -> None:
    assert accuracy_floor(ACCURACY, drop) == expected


def test_effective_floor() -> None:
    config = replace(BASE, max_accuracy_drop=2.0, prefix_accuracy=ACCURACY)
    assert config.effective_floor == 2
    assert replace(config, floor_k=3).effective_floor == 3
    assert BASE.effective_floor == 1


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_students": 0}, "n_students=0"),
        ({"floor_k": 5}, "floor_k=5"),
        ({"latency_target_s": 0.0}, "latency_target_s=0.0"),
        ({"headroom": 1.5}, "headroom=1.5"),
        ({"up_hold_s": -1.0}, "up_hold_s=-1.0"),
        ({"concurrency": 0}, "concurrency=0"),
        ({"prefix_accuracy": (0.8, 0.9)}, "2 values but n_students=4"),
        ({"prefix_accuracy": (80.0, 85.0, 86.0, 87.0)}, "0..1"),
        ({"max_accuracy_drop": 1.0}, "needs prefix_accuracy"),
        ({"max_accuracy_drop": -1.0, "prefix_accuracy": ACCURACY}, "max_accuracy_drop=-1.0"),
    ],
)
def test_config_validation(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        replace(BASE, **changes)  # type: ignore[arg-type]
