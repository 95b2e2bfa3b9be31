"""Arrival processes: seeding, rates, burstiness, traces; and request building."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.bench.workload import (
    WorkloadConfig,
    build_workload,
    gamma,
    on_off,
    poisson,
    ramp,
    replay,
)
from shoal.errors import ConfigError, DataError
from shoal.types import Task, TextDataset

# Long horizons make the statistical checks tight; bounds are still several sigma wide.
RATE, HORIZON = 50.0, 2000.0


def _sorted_in_window(times: list[float], duration: float) -> None:
    assert times == sorted(times)
    assert all(0 <= t < duration for t in times)


def test_same_seed_same_offsets_and_different_seed_differs() -> None:
    for make in (
        lambda s: poisson(20, 10, s),
        lambda s: gamma(20, 10, 2.0, s),
        lambda s: on_off(5, 50, 4, 1, 10, s),
        lambda s: ramp(1, 40, 10, s),
    ):
        assert make(3) == make(3)
        assert make(3) != make(4)
        _sorted_in_window(make(3), 10)


def test_poisson_mean_rate_close_to_nominal() -> None:
    times = poisson(RATE, HORIZON, seed=0)
    # Expected count 100k with sd ~316; 2% is over 6 sd.
    assert len(times) == pytest.approx(RATE * HORIZON, rel=0.02)
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_honours_rate_and_cv(cv: float) -> None:
    times = gamma(RATE, HORIZON, cv, seed=1)
    gaps = np.diff(times)
    assert len(times) == pytest.approx(RATE * HORIZON, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.15)


def test_on_off_is_faster_inside_bursts() -> None:
    period, burst, base, peak = 10.0, 2.0, 5.0, 50.0
    times = np.array(on_off(base, peak, period, burst, HORIZON, seed=2))
    in_burst = np.mod(times, period) >= period - burst
    n_periods = HORIZON / period
    burst_rate = in_burst.sum() / (n_periods * burst)
    quiet_rate = (~in_burst).sum() / (n_periods * (period - burst))
    assert burst_rate == pytest.approx(peak, rel=0.1)
    assert quiet_rate == pytest.approx(base, rel=0.1)


def test_ramp_rises_linearly() -> None:
    times = np.array(ramp(0.0, 40.0, HORIZON, seed=3))
    first, second = (times < HORIZON / 2).sum(), (times >= HORIZON / 2).sum()
    # Rate integrates to 10/s over the first half and 30/s over the second.
    assert first / (HORIZON / 2) == pytest.approx(10, rel=0.1)
    assert second / (HORIZON / 2) == pytest.approx(30, rel=0.1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: poisson(0, 10, 0), "rate=0"),
        (lambda: gamma(10, 10, -1, 0), "cv=-1"),
        (lambda: on_off(1, 10, 5, 6, 10, 0), "burst_s=6"),
        (lambda: ramp(0, 0, 10, 0), "not both 0"),
    ],
)
def test_bad_parameters_are_named(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_replay_sorts_and_shifts_to_zero(tmp_path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("timestamp,user\n1700000002.5,a\n1700000001.0,b\n1700000001.25,c\n")
    assert replay(path) == [0.0, 0.25, 1.5]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time\n1\n2\n", "no 'timestamp' column"),
        ("timestamp\n1\nsoon\n", "line|'soon'"),
        ("timestamp\n", "no timestamps"),
        ("timestamp\n1\ninf\n", "not finite"),
        ("", "no 'timestamp' column"),
    ],
)
def test_replay_rejects_malformed_trace(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        replay(path)


def test_replay_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        replay(tmp_path / "nope.csv")


def _task(pairs: bool = False) -> Task:
    texts = [f"text {i}" for i in range(10)]
    split = TextDataset(
        texts, [i % 3 for i in range(10)], [f"pair {i}" for i in range(10)] if pairs else None, 3
    )
    return Task("toy", {"test": split}, ["neg", "neu", "pos"])


def test_build_workload_draws_real_texts_with_their_labels() -> None:
    config = WorkloadConfig(kind="poisson", rate=100, duration_s=2, seed=5)
    w = build_workload(config, task=_task())
    assert w == build_workload(config, task=_task())
    assert len(w) > 100 and w.duration_s == 2 and w.label_names == ["neg", "neu", "pos"]
    assert [r.offset_s for r in w.requests] == poisson(100, 2, 5)
    for r in w.requests:
        i = int(r.text.split()[1])
        assert r.label == i % 3 and r.text_pair is None
    assert len({r.text for r in w.requests}) > 1


def test_build_workload_pairs_cap_and_replay(tmp_path) -> None:
    capped = build_workload(WorkloadConfig(rate=100, max_requests=7), task=_task(pairs=True))
    assert len(capped) == 7
    assert capped.duration_s == capped.requests[-1].offset_s < 30
    assert all(r.text_pair == r.text.replace("text", "pair") for r in capped.requests)
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n3\n4\n6\n")
    w = build_workload(WorkloadConfig(kind="replay", replay=trace), task=_task())
    assert [r.offset_s for r in w.requests] == [0, 1, 3] and w.duration_s == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "zipf"}, "kind='zipf'"),
        ({"kind": "replay"}, "needs replay="),
        ({"max_requests": 0}, "max_requests=0"),
    ],
)
def test_config_validation_names_the_field(kwargs, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkloadConfig(**kwargs)


def test_unknown_split_is_named() -> None:
    with pytest.raises(ConfigError, match="split='dev'"):
        build_workload(WorkloadConfig(split="dev", duration_s=1), task=_task())
