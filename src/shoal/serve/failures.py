"""Serving failures: counted, logged without flooding, and judged for ``/health``.

``Failures`` is the engine's record: each failure has a stage (``FAILURE_STAGES``, the metrics'
label), a reason in one line without internals (``/health`` shows it) and the exception for
the log. After ``FAILING_AFTER`` failures in a row ``failing`` says why, until a forward pass
succeeds; while failing, the engine reruns the model's self-check ``RECHECK_S`` after the last
failure (``recheck_at``), so a runtime that recovered with no traffic to show it is healthy
again.

A worker that is down fails every batch at once, hundreds a second; a traceback for each would
write megabytes a minute and bury the one line that says what happened. ``FailureLog`` logs
the first failure of a streak in full (with its traceback), then counts: at most one summary
line per ``interval_s`` gives the count and the latest message, and the first success after a
streak logs one line with the total. Each key is a streak of its own.

    failures = FailureLog(log, interval_s=10.0)
    failures.failed("runtime", "runtime failed on a batch of 4", exc)  # traceback, once
    failures.failed("runtime", "runtime failed on a batch of 2", exc)  # counted
    failures.recovered("a batch ran")  # one line per streak that ends

No torch, no asyncio: plain state, called from the event loop (``FailureLog`` from any
thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

FAILING_AFTER = 3
"""Failures in a row (batches, or requests failing outside a batch) after which the engine
reports itself ``failing`` (``/health``: 503), until a forward pass succeeds."""
RECHECK_S = 10.0
"""While failing, the self-check reruns this many seconds after the last failure."""
FAILURE_LOG_INTERVAL_S = 10.0
"""At most one summary line per this many seconds for a streak of failures of one stage."""
FAILURE_STAGES = ("runtime", "output", "answer", "engine", "request", "self_check")
"""Where a failure happened: the runtime raised on a batch (``runtime``); its logits were not
finite or not one row per input (``output``); answering a computed batch failed (``answer``);
a turn of the engine's loop failed (``engine``); a request failed outside the engine, e.g.
while tokenising (``request``); the self-check failed while the engine was failing
(``self_check``)."""


@dataclass
class _Streak:
    """Failures of one key since the last success."""

    started: float
    last_line: float
    """When the last line about this streak was logged."""
    total: int = 1
    unreported: int = 0
    """Failures since the last line."""


class FailureLog:
    """Rate-limited failure lines on ``logger``: one in full per streak, then a summary per
    ``interval_s`` seconds (``clock`` seconds). Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._streaks: dict[str, _Streak] = {}
        self._lock = threading.Lock()

    def failed(self, key: str, message: str, error: BaseException | None = None) -> None:
        """One failure: logged with ``error``'s traceback if it starts a streak, else counted
        (and summarised once ``interval_s`` passed since the last line)."""
        now = self.clock()
        with self._lock:
            streak = self._streaks.get(key)
            if streak is None:
                self._streaks[key] = _Streak(started=now, last_line=now)
                line: str | None = message
            else:
                streak.total += 1
                streak.unreported += 1
                line = None
                if now - streak.last_line >= self.interval_s:
                    line = (
                        f"{message} ({streak.unreported} failures like it in the last "
                        f"{now - streak.last_line:.0f} s, {streak.total} since the first; "
                        "tracebacks are logged once per streak)"
                    )
                    streak.last_line, streak.unreported = now, 0
        if line is not None:
            exc_info = error if streak is None and error is not None else None
            self.logger.error(line, exc_info=exc_info)

    def recovered(self, message: str) -> None:
        """End every streak: one line each, ``message`` with the failures' count and span."""
        now = self.clock()
        with self._lock:
            ended, self._streaks = self._streaks, {}
        for key, streak in ended.items():
            self.logger.warning(
                "%s after %d %s failure(s) over %.1f s",
                message,
                streak.total,
                key,
                now - streak.started,
            )


class Failures:
    """Failures in a row, the last one's reason, the observers of each, the log.

    Args:
        logger: where ``FailureLog`` writes.
        clock: seconds (the engine's clock).
    """

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = FAILURE_LOG_INTERVAL_S,
    ) -> None:
        self.clock = clock
        self.in_a_row = 0
        """Failures since the last forward pass that succeeded."""
        self.last_reason = ""
        """The last failure's reason; '' after a success."""
        self.last_at = -float("inf")
        """``clock()`` of the last failure."""
        self.log = FailureLog(logger, interval_s, clock)
        self._observers: list[Callable[[str], None]] = []

    def subscribe(self, observer: Callable[[str], None]) -> None:
        """Call ``observer`` with the stage of every failure."""
        self._observers.append(observer)

    def record(self, stage: str, reason: str, error: BaseException | None = None) -> None:
        """Count one failure.

        Args:
            stage: one of ``FAILURE_STAGES``.
            reason: one line without internals (paths, pids); ``/health`` may show it.
            error: the exception, logged with its traceback if it starts a streak.
        """
        if stage not in FAILURE_STAGES:
            raise ValueError(f"stage={stage!r} is not one of {FAILURE_STAGES}")
        self.in_a_row += 1
        self.last_at = self.clock()
        self.last_reason = reason
        detail = str(error).split("\n", 1)[0] if error is not None else ""
        self.log.failed(stage, f"{reason}: {detail}" if detail else reason, error)
        for observer in self._observers:
            try:
                observer(stage)
            except Exception:  # metrics must never break serving
                self.log.logger.exception("failure observer failed")

    def succeeded(self, what: str) -> None:
        """A forward pass succeeded (``what``: which): the streak, if any, ends."""
        if self.in_a_row:
            self.log.recovered(f"serving again ({what})")
        self.in_a_row, self.last_reason = 0, ""

    @property
    def failing(self) -> str | None:
        """Why the server cannot be trusted to answer: ``FAILING_AFTER`` or more failures in a
        row since the last forward pass that succeeded; None when it can."""
        if self.in_a_row < FAILING_AFTER:
            return None
        return f"the last {self.in_a_row} batches or requests failed ({self.last_reason})"

    @property
    def recheck_at(self) -> float | None:
        """When the self-check is due (``clock()`` time) while failing; None when not."""
        return self.last_at + RECHECK_S if self.in_a_row >= FAILING_AFTER else None
