"""The parent's end of one worker process: spawn it, wait until it is ready, talk to it, stop it.

Every wait has a deadline and also watches the process's sentinel, so a dead worker is noticed
at once and nothing hangs: a death or a timeout raises ``Dead`` with how it went. A worker that
fails to start is retried with exponential backoff (``RESTART_BACKOFF_S``); until the next
attempt is due, ``restart`` raises at once instead of spawning a process per batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from shoal.serve.errors import WorkerCrashed
from shoal.serve.runtime.allocation import Slot
from shoal.serve.runtime.config import RuntimeConfig
from shoal.serve.runtime.messages import FromWorker, Ready, Stop, ToWorker
from shoal.serve.runtime.worker import describe, worker_main

log = logging.getLogger("shoal.serve.runtime.pool")

RESTART_BACKOFF_S = (1.0, 60.0)
"""Seconds before retrying a worker that failed to start: the first wait, doubled after each
further failure up to the second value."""

_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _child_env(values: dict[str, str]) -> Iterator[None]:
    """Environment for a process being spawned (it copies ``os.environ`` at start)."""
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class Dead(Exception):
    """The worker died or timed out; the message says how."""


class BackingOff(WorkerCrashed):
    """The worker failed to start and its next attempt is not due yet."""


@dataclass(frozen=True)
class WorkerStatus:
    """A worker as health endpoints show it."""

    index: int
    device: str
    cores: tuple[int, ...]
    students: tuple[int, ...]
    """Students this worker holds."""
    pid: int | None
    alive: bool
    """Its process runs and has loaded its students: one still loading is not alive."""
    restarts: int
    """Times the runtime tried to restart this worker after a crash or hang."""
    start_failures: int = 0
    """Failed starts in a row (0 once it runs); while above 0 the worker is down and backing
    off."""


def exit_reason(process: Any) -> str:
    """How a process that stopped answering went: its signal or exit code."""
    process.join(timeout=1.0)
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerHandle:
    """One worker process holding ``students`` on ``slot``.

    The pool holds ``lock`` around every exchange (a send and the replies it waits for) and
    every restart; ``inflight`` (guarded by the pool's lock) counts the batches planned on it.
    """

    def __init__(
        self,
        slot: Slot,
        students: tuple[int, ...],
        cohort_dir: str,
        config: RuntimeConfig,
        ctx: Any,
        closed: threading.Event,
    ) -> None:
        self.slot = slot
        self.students = students
        self.cohort_dir = cohort_dir
        self.config = config
        self._ctx = ctx  # a multiprocessing "spawn" context
        self._closed = closed  # set when the pool closes: no more restarts
        self.process: Any = None  # multiprocessing Process
        self.conn: Connection | None = None
        self.info: dict[str, Any] = {}
        self.ready = False
        """Whether the running process has loaded its students (sent ``Ready``): a process
        still loading, or one that is dead, is down."""
        self.lock = threading.Lock()
        self.restarts = 0
        self.inflight = 0
        self.start_failures = 0
        """Failed starts in a row; 0 once a start succeeds."""
        self.retry_at = 0.0
        """``time.monotonic()`` before which no restart is tried."""
        self.start_error = ""

    @property
    def index(self) -> int:
        return self.slot.index

    @property
    def where(self) -> str:
        """One line naming the worker's process for messages."""
        return describe(self.info)

    # ------------------------------------------------------------------ lifecycle

    def spawn(self) -> None:
        """Start the process (it loads the cohort; ``await_ready`` waits for that)."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            name=f"shoal-worker-{self.slot.index}",
            args=(
                child,
                self.cohort_dir,
                self.slot,
                self.config.dtype,
                self.students,
                self.config.backend,
            ),
            daemon=True,
        )
        # OpenMP reads these when torch loads, before the worker's own code runs.
        threads = str(self.slot.threads)
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if self.config.omp_spincount is not None:
            env["GOMP_SPINCOUNT"] = str(self.config.omp_spincount)
        with _child_env(env):
            proc.start()
        child.close()  # only the worker holds its end, so its death reads as EOF here
        self.process, self.conn, self.ready = proc, parent, False
        self.info = {"device": self.slot.device, "cores": self.slot.cores, "pid": proc.pid}

    def await_ready(self) -> None:
        """Wait for the worker's ``Ready``; ``WorkerCrashed`` if it dies or times out first."""
        try:
            msg = self.recv(None, self.config.startup_timeout_s)
        except Dead as e:
            raise WorkerCrashed(
                f"worker {self.index} ({self.where}) failed to start: "
                f"it {e} while loading {self.cohort_dir}; see its stderr "
                f"above"
            ) from None
        assert isinstance(msg, Ready), msg
        self.info, self.ready = msg.info, True

    def restart(self) -> None:
        """Replace the process by a fresh one (caller holds ``lock``).

        Raises ``WorkerCrashed`` if it fails to start, or at once (``BackingOff``) while backing
        off after a failed start."""
        if self._closed.is_set():
            raise WorkerCrashed(f"worker {self.index} is gone and the pool is closed")
        wait_s = self.retry_at - time.monotonic()
        if wait_s > 0:
            raise BackingOff(
                f"worker {self.index} failed to start {self.start_failures} time(s) "
                f"({self.start_error}); next attempt in {wait_s:.1f} s"
            )
        self.stop(graceful=False)
        self.restarts += 1
        log.warning("restarting worker %d (%s), restart #%d", self.index, self.where, self.restarts)
        try:
            self.spawn()
            self.await_ready()
        except WorkerCrashed as e:
            self._back_off(e)
            raise
        self.start_failures, self.retry_at, self.start_error = 0, 0.0, ""

    def _back_off(self, error: Exception) -> None:
        """Record a failed start and when the next one may be tried."""
        self.stop(graceful=False)  # the process is dead or hung: not alive from now on
        self.start_failures += 1
        first, most = RESTART_BACKOFF_S
        delay = min(most, first * 2 ** (self.start_failures - 1))
        self.retry_at = time.monotonic() + delay
        self.start_error = str(error).split(": it ", 1)[-1].split(";")[0]
        log.error("worker %d failed to start (%s); next attempt in %g s", self.index, error, delay)

    def stop(self, graceful: bool) -> None:
        """End the process: a ``Stop`` message first when ``graceful``, then SIGKILL."""
        proc, conn = self.process, self.conn
        if proc is None:
            return
        if graceful and proc.is_alive() and conn is not None:
            try:
                conn.send(Stop())
                proc.join(timeout=5.0)
            except OSError:
                pass
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5.0)
        if conn is not None:
            conn.close()
        self.process, self.conn, self.ready = None, None, False

    def ensure_alive(self) -> None:
        """Restart the process if it died while idle (no batch was on it yet)."""
        if self.process is None or not self.process.is_alive():
            self.restart()

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            self.slot.index,
            self.slot.device,
            self.slot.cores,
            self.students,
            self.info.get("pid"),
            self.ready and bool(self.process and self.process.is_alive()),
            self.restarts,
            self.start_failures,
        )

    # ------------------------------------------------------------------ messaging

    def send(self, msg: ToWorker) -> None:
        """Send one message; ``Dead`` if the worker is gone."""
        assert self.conn is not None
        try:
            self.conn.send(msg)
        except OSError as e:  # BrokenPipeError: the worker is gone
            raise Dead(f"{exit_reason(self.process)} ({type(e).__name__})") from None

    def recv(self, req_id: int | None, timeout_s: float) -> FromWorker:
        """The reply to ``req_id`` (any message when None), watching the process meanwhile."""
        assert self.conn is not None and self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Dead(f"did not answer within {timeout_s:g}s")
            ready = wait([self.conn, self.process.sentinel], timeout=left)
            if self.conn in ready:
                try:
                    msg: FromWorker = self.conn.recv()
                except (EOFError, OSError):
                    raise Dead(exit_reason(self.process)) from None
                if req_id is None or getattr(msg, "req_id", None) == req_id:
                    return msg
                continue  # a reply to a batch that already failed elsewhere
            if ready:
                raise Dead(exit_reason(self.process))
