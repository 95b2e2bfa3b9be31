"""The failure record without an engine: the rate-limited log (one traceback per streak, one
summary per interval, a recovery line), the count in a row and the health rule."""

from __future__ import annotations

import logging

import pytest

from shoal.serve.failures import FAILING_AFTER, RECHECK_S, FailureLog, Failures


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_streak_logs_one_traceback_then_a_summary_per_interval(caplog):
    caplog.set_level(logging.INFO, logger="test.failures")
    records = caplog.records
    clock = Clock()
    failures = FailureLog(logging.getLogger("test.failures"), interval_s=10.0, clock=clock)
    error = RuntimeError("worker down")
    for _ in range(1000):  # one second of a worker outage
        failures.failed("runtime", "batch failed", error)
        clock.now += 0.001
    assert len(records) == 1 and records[0].exc_info is not None
    clock.now += 9.0  # 10 s since the first line
    failures.failed("runtime", "batch failed again", error)
    failures.failed("runtime", "batch failed again", error)  # counted, not logged
    failures.failed("other", "another kind", None)  # its own streak: logged at once
    assert [r.exc_info is None for r in records] == [False, True, True]
    assert "batch failed again (1000 failures like it in the last 10 s, 1001 since" in (
        records[1].getMessage()
    )
    failures.recovered("serving again")
    failures.recovered("serving again")  # no streak left: nothing more
    ends = sorted(r.getMessage() for r in records[3:])
    assert ends == [
        "serving again after 1 other failure(s) over 0.0 s",
        "serving again after 1002 runtime failure(s) over 10.0 s",
    ]
    failures.failed("runtime", "a new streak", error)
    assert records[-1].exc_info is not None  # a new streak shows its traceback again


def test_failing_from_the_nth_failure_in_a_row_until_a_success():
    clock = Clock()
    failures = Failures(logging.getLogger("test.failures"), clock)
    stages: list[str] = []
    failures.subscribe(stages.append)
    for i in range(FAILING_AFTER):
        assert failures.failing is None and failures.recheck_at is None
        failures.record("output", f"NaN logits {i}")
    assert failures.failing == f"the last {FAILING_AFTER} batches or requests failed (NaN logits 2)"
    assert failures.recheck_at == clock.now + RECHECK_S and stages == ["output"] * FAILING_AFTER
    clock.now += 3600.0  # no traffic: still failing until a forward pass succeeds
    assert failures.failing is not None
    failures.succeeded("a batch ran")
    assert failures.failing is None and failures.in_a_row == 0 and failures.last_reason == ""
    with pytest.raises(ValueError, match="not one of"):
        failures.record("typo", "x")
