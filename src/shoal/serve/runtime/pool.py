"""Worker processes that hold the students: start, health-check, dispatch, gather, restart.

One process per device slot (a GPU, several per GPU, or a group of pinned CPU cores). A batch
goes to the workers holding the active students; each returns its small contribution ((B, H),
or (B, C) for a cohort with a head per student), the parent adds them and applies the head.
Every wait has a deadline and also watches the process's sentinel, so a dead worker is noticed
at once and nothing hangs. A worker that dies
with a batch in flight is restarted and the batch retried (``RuntimeConfig.retries`` times);
after that the batch fails with ``WorkerCrashed`` -- never silently lost. A worker that fails to
start is retried with exponential backoff (``RESTART_BACKOFF_S``); until the next attempt is
due, batches that need it fail at once instead of each spawning a process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.models.cohort import ShoalModel
from shoal.serve.runtime.allocation import (
    Slot,
    allocate,
    available_cores,
    plan_slots,
    workers_for,
)
from shoal.serve.runtime.config import RuntimeConfig
from shoal.serve.runtime.errors import WorkerCrashed, WorkerError
from shoal.serve.runtime.runner import ArrayLike, LocalRunner
from shoal.serve.runtime.worker import describe, worker_main

log = logging.getLogger(__name__)


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


class _Dead(Exception):
    """Internal: the worker died or timed out; the message says how."""


class _BackingOff(WorkerCrashed):
    """Internal: the worker failed to start and its next attempt is not due yet."""


RESTART_BACKOFF_S = (1.0, 60.0)
"""Seconds before retrying a worker that failed to start: the first wait, doubled after each
further failure up to the second value."""


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
    restarts: int
    """Times the runtime tried to restart this worker after a crash or hang."""
    start_failures: int = 0
    """Failed starts in a row (0 once it runs); while above 0 the worker is down and backing
    off."""


@dataclass
class _Worker:
    slot: Slot
    students: tuple[int, ...]
    process: Any = None  # multiprocessing Process (spawn context)
    conn: Connection | None = None
    info: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    restarts: int = 0
    inflight: int = 0
    start_failures: int = 0
    """Failed starts in a row; 0 once a start succeeds."""
    retry_at: float = 0.0
    """``time.monotonic()`` before which no restart is tried."""
    start_error: str = ""


def _exit_reason(process: Any) -> str:
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


def _numpy(x: ArrayLike | None) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.int64)


class WorkerPool:
    """Worker processes holding the students of one cohort.

    Args:
        cohort_dir: a folder written by ``ShoalModel.save_pretrained``; every worker loads it.
        config: the layout; ``config.workers`` must be >= 1.
        dispatch_hook: fault injection for tests, called as ``hook(phase, {worker: pid})``
            with phase 'before_send' and 'after_send' around each send of a batch (and of a
            retry), before any reply is read.
    """

    def __init__(
        self,
        cohort_dir: str | Path,
        config: RuntimeConfig,
        *,
        dispatch_hook: Callable[[str, dict[int, int]], None] | None = None,
    ) -> None:
        if config.workers < 1:
            raise ValueError("WorkerPool needs config.workers >= 1; use LocalRunner for 0")
        self.cohort_dir = str(cohort_dir)
        self.config = config
        self.dispatch_hook = dispatch_hook
        # The parent keeps a CPU copy for the head, the weights alpha and k checks. Its work per
        # batch is tiny (sum small partials, one head), so it runs single-threaded: idle
        # OpenMP threads here would spin on the workers' cores (measured: the head took 15 ms
        # instead of 0.06 ms beside a busy worker). The previous count is restored on close.
        self._parent_threads = torch.get_num_threads()
        self._closed = threading.Event()
        self.head_runner = LocalRunner(ShoalModel.from_pretrained(self.cohort_dir, "cpu"))
        self.model = self.head_runner.model
        cores = available_cores()
        n_gpus = torch.cuda.device_count() if config.device.startswith("cuda") else 0
        self.slots = plan_slots(
            config.workers,
            config.device,
            threads=config.threads,
            cores=cores,
            n_gpus=n_gpus,
            procs_per_gpu=config.procs_per_gpu,
        )
        self.allocation = allocate(
            self.model.n_students, config.workers, config.replicate, config.max_students_per_worker
        )
        self._workers = [_Worker(s, a) for s, a in zip(self.slots, self.allocation, strict=True)]
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()  # guards the in-flight counts
        self._ids = itertools.count()
        self.last_worker_seconds: dict[int, float] = {}
        """Compute seconds inside each worker that ran the last batch (diagnostics)."""
        torch.set_num_threads(1)
        try:
            for w in self._workers:
                self._spawn(w)
            for w in self._workers:
                self._await_ready(w)
        except BaseException:
            self.close()
            raise
        self._monitor: threading.Thread | None = None
        if config.health_interval_s > 0:
            self._monitor = threading.Thread(
                target=self._watch, name="shoal-pool-monitor", daemon=True
            )
            self._monitor.start()

    @property
    def n_students(self) -> int:
        return self.model.n_students

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, w: _Worker) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main,
            name=f"shoal-worker-{w.slot.index}",
            args=(
                child,
                self.cohort_dir,
                w.slot,
                self.config.dtype,
                w.students,
                self.config.backend,
            ),
            daemon=True,
        )
        # OpenMP reads these when torch loads, before the worker's own code runs.
        env = {"OMP_NUM_THREADS": str(w.slot.threads), "MKL_NUM_THREADS": str(w.slot.threads)}
        if self.config.omp_spincount is not None:
            env["GOMP_SPINCOUNT"] = str(self.config.omp_spincount)
        with _child_env(env):
            proc.start()
        child.close()  # only the worker holds its end, so its death reads as EOF here
        w.process, w.conn, w.info = (
            proc,
            parent,
            {"device": w.slot.device, "cores": w.slot.cores, "pid": proc.pid},
        )

    def _await_ready(self, w: _Worker) -> None:
        try:
            msg = self._recv(w, None, self.config.startup_timeout_s)
        except _Dead as e:
            raise WorkerCrashed(
                f"worker {w.slot.index} ({describe(w.info)}) failed to start: "
                f"it {e} while loading {self.cohort_dir}; see its stderr "
                f"above"
            ) from None
        w.info = msg[1]

    def _restart(self, w: _Worker) -> None:
        """Replace w's process by a fresh one (caller holds ``w.lock``).

        Raises ``WorkerCrashed`` if it fails to start, or at once while backing off after a
        failed start."""
        if self._closed.is_set():
            raise WorkerCrashed(f"worker {w.slot.index} is gone and the pool is closed")
        wait_s = w.retry_at - time.monotonic()
        if wait_s > 0:
            raise _BackingOff(
                f"worker {w.slot.index} failed to start {w.start_failures} time(s) "
                f"({w.start_error}); next attempt in {wait_s:.1f} s"
            )
        self._stop(w, graceful=False)
        w.restarts += 1
        log.warning(
            "restarting worker %d (%s), restart #%d", w.slot.index, describe(w.info), w.restarts
        )
        try:
            self._spawn(w)
            self._await_ready(w)
        except WorkerCrashed as e:
            self._back_off(w, e)
            raise
        w.start_failures, w.retry_at, w.start_error = 0, 0.0, ""

    def _back_off(self, w: _Worker, error: Exception) -> None:
        """Record a failed start and when the next one may be tried."""
        self._stop(w, graceful=False)  # the process is dead or hung: not alive from now on
        w.start_failures += 1
        first, most = RESTART_BACKOFF_S
        delay = min(most, first * 2 ** (w.start_failures - 1))
        w.retry_at = time.monotonic() + delay
        w.start_error = str(error).split(": it ", 1)[-1].split(";")[0]
        log.error(
            "worker %d failed to start (%s); next attempt in %g s", w.slot.index, error, delay
        )

    def _stop(self, w: _Worker, graceful: bool) -> None:
        proc, conn = w.process, w.conn
        if proc is None:
            return
        if graceful and proc.is_alive() and conn is not None:
            try:
                conn.send(("stop",))
                proc.join(timeout=5.0)
            except OSError:
                pass
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5.0)
        if conn is not None:
            conn.close()
        w.process, w.conn = None, None

    def close(self) -> None:
        """Stop every worker (gracefully, then by force) and the monitor. Idempotent."""
        if not self._closed.is_set():
            torch.set_num_threads(self._parent_threads)
        self._closed.set()
        for w in self._workers:
            got = w.lock.acquire(timeout=1.0)
            try:
                self._stop(w, graceful=got)
            finally:
                if got:
                    w.lock.release()
        monitor = getattr(self, "_monitor", None)
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=5.0)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ health

    def _watch(self) -> None:
        """Restart idle workers whose process died, as soon as the death is seen."""
        while not self._closed.is_set():
            procs = [(w, w.process) for w in self._workers]
            sentinels = {p.sentinel: (w, p) for w, p in procs if p is not None}
            down = [w for w in self._workers if w.process is None]  # backing off
            timeout = self.config.health_interval_s
            ready = wait(list(sentinels), timeout=timeout) if sentinels else []
            if not sentinels:
                self._closed.wait(timeout)
            busy = failed = False
            todo = [(w, p) for w, p in (sentinels[s] for s in ready)] + [(w, None) for w in down]
            for w, proc in todo:
                if self._closed.is_set() or not w.lock.acquire(blocking=False):
                    busy = True  # a dispatch holds it and will restart it itself
                    continue
                try:
                    if w.process is proc and time.monotonic() >= w.retry_at:
                        self._restart(w)
                except _BackingOff:
                    failed = True
                except Exception:  # logged by _back_off; retried when the backoff ends
                    failed = True
                finally:
                    w.lock.release()
            if failed:  # back off: a worker that cannot start should not spin the monitor
                self._closed.wait(self.config.health_interval_s)
            elif busy:
                self._closed.wait(min(self.config.health_interval_s, 0.05))

    def check_health(self, timeout_s: float = 10.0) -> list[WorkerStatus]:
        """Ping every worker; restart any that is dead or does not answer within the timeout."""
        for w in self._workers:
            with w.lock:
                try:
                    self._ensure_alive(w)
                    req = next(self._ids)
                    self._send(w, ("ping", req))
                    self._recv(w, req, timeout_s)
                except _Dead:
                    self._restart(w)
        return self.status()

    def status(self) -> list[WorkerStatus]:
        """Where each worker runs, what it holds, whether it is alive."""
        return [
            WorkerStatus(
                w.slot.index,
                w.slot.device,
                w.slot.cores,
                w.students,
                w.info.get("pid"),
                bool(w.process and w.process.is_alive()),
                w.restarts,
                w.start_failures,
            )
            for w in self._workers
        ]

    # ------------------------------------------------------------------ messaging

    def _ensure_alive(self, w: _Worker) -> None:
        if w.process is None or not w.process.is_alive():
            self._restart(w)  # died while idle: the batch was not on it yet

    def _send(self, w: _Worker, msg: tuple) -> None:
        assert w.conn is not None
        try:
            w.conn.send(msg)
        except OSError as e:  # BrokenPipeError: the worker is gone
            raise _Dead(f"{_exit_reason(w.process)} ({type(e).__name__})") from None

    def _recv(self, w: _Worker, req_id: int | None, timeout_s: float) -> tuple:
        """The reply to ``req_id`` (any message when None), watching the process meanwhile."""
        assert w.conn is not None and w.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Dead(f"did not answer within {timeout_s:g}s")
            ready = wait([w.conn, w.process.sentinel], timeout=left)
            if w.conn in ready:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    raise _Dead(_exit_reason(w.process)) from None
                if req_id is None or (len(msg) > 1 and msg[1] == req_id):
                    return msg
                continue  # a reply to a batch that already failed elsewhere
            if ready:
                raise _Dead(_exit_reason(w.process))

    # ------------------------------------------------------------------ dispatch

    def run(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None,
        token_type_ids: ArrayLike | None,
        k: int,
    ) -> torch.Tensor:
        """Logits of the first k students, computed on the workers that hold them.

        Shape:
            (B, L) inputs -> (B, num_labels) float32 on the CPU.
        Raises:
            WorkerCrashed: a worker died (or timed out) on every attempt at this batch.
            WorkerError: a worker raised while computing (its message is included).
        """
        k = self.model.check_k(k)
        batch = (_numpy(input_ids), _numpy(attention_mask), _numpy(token_type_ids))
        with self._lock:
            plan = workers_for(
                k, self.allocation, {i: w.inflight for i, w in enumerate(self._workers)}
            )
            for i in plan:
                self._workers[i].inflight += 1
        held: list[int] = []
        try:
            for i in sorted(plan):  # a fixed lock order: concurrent batches cannot deadlock
                self._workers[i].lock.acquire()
                held.append(i)
            partials = self._dispatch(plan, batch, k)
        finally:
            for i in held:
                self._workers[i].lock.release()
            with self._lock:
                for i in plan:
                    self._workers[i].inflight -= 1
        total = np.sum([partials[i] for i in sorted(plan)], axis=0, dtype=np.float32)
        return self.head_runner.finish(torch.from_numpy(total))

    def _dispatch(
        self, plan: dict[int, tuple[int, ...]], batch: tuple, k: int
    ) -> dict[int, np.ndarray]:
        """Send to every planned worker, then gather; retry the part of a crashed worker."""
        sent: dict[int, int | None] = {}

        def send(i: int) -> None:
            w = self._workers[i]
            req = next(self._ids)
            try:
                self._ensure_alive(w)
                self._send(w, ("run", req, *batch, plan[i], k))
                sent[i] = req
            except (_Dead, WorkerCrashed):
                sent[i] = None  # handled as a crash when gathering

        self._hook("before_send", plan)
        for i in plan:
            send(i)
        self._hook("after_send", plan)
        out: dict[int, np.ndarray] = {}
        seconds: dict[int, float] = {}
        failure: Exception | None = None
        for i in plan:  # gather every reply even after a failure, so no stale replies remain
            w = self._workers[i]
            for attempt in range(self.config.retries + 1):
                try:
                    req = sent[i]
                    if req is None:
                        raise _Dead(_exit_reason(w.process) if w.process else "is not running")
                    msg = self._recv(w, req, self.config.request_timeout_s)
                    break
                except _Dead as e:
                    where = describe(w.info)
                    try:
                        self._restart(w)
                    except WorkerCrashed as again:
                        failure = failure or again
                        msg = None
                        break
                    if attempt == self.config.retries:
                        failure = failure or WorkerCrashed(
                            f"worker {i} ({where}) {e} while running a batch of shape "
                            f"{tuple(batch[0].shape)} with students {list(plan[i])}; tried "
                            f"{attempt + 1} time(s), the batch failed; the worker was restarted"
                        )
                        msg = None
                        break
                    log.warning("worker %d (%s) %s; retrying its part of the batch", i, where, e)
                    self._hook("before_send", {i: plan[i]})
                    send(i)
                    self._hook("after_send", {i: plan[i]})
            if msg is None:
                continue
            if msg[0] == "ok":
                out[i], seconds[i] = msg[2], msg[3]
            else:
                failure = failure or WorkerError(
                    f"worker {i} ({describe(w.info)}) failed on a batch: {msg[2]}"
                )
        self.last_worker_seconds = seconds
        if failure is not None:
            raise failure
        return out

    def _hook(self, phase: str, plan: dict[int, tuple[int, ...]]) -> None:
        if self.dispatch_hook is not None:
            self.dispatch_hook(phase, {i: self._workers[i].info.get("pid", -1) for i in plan})
