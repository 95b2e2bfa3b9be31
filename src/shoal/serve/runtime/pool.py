"""Worker processes that hold the students: start, health-check, dispatch, gather, restart.

One process per device slot (a GPU, several per GPU, or a group of pinned CPU cores). A batch
goes to the workers holding the active students; each returns its small contribution ((B, H),
or (B, C) for a cohort with a head per student), the parent adds them and applies the head.
Each process is a ``WorkerHandle`` (``handle.py``): every wait has a deadline and watches the
process, so a dead worker is noticed at once and nothing hangs. A worker that dies with a batch
in flight is restarted and the batch retried (``RuntimeConfig.retries`` times); after that the
batch fails with ``WorkerCrashed`` -- never silently lost. A worker that fails to start is
retried with exponential backoff (``handle.RESTART_BACKOFF_S``); until the next attempt is
due, batches that need it fail at once instead of each spawning a process.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import torch

from shoal.models.cohort import ShoalModel
from shoal.serve.batch import Batch
from shoal.serve.errors import WorkerCrashed, WorkerError
from shoal.serve.runtime.allocation import allocate, available_cores, plan_slots, workers_for
from shoal.serve.runtime.config import RuntimeConfig
from shoal.serve.runtime.handle import BackingOff, Dead, WorkerHandle, WorkerStatus, exit_reason
from shoal.serve.runtime.messages import Done, FromWorker, Ping, Run
from shoal.serve.runtime.runner import ArrayLike, LocalRunner

log = logging.getLogger(__name__)

Plan = dict[int, tuple[int, ...]]
"""Worker index -> the students it runs for one batch (``allocation.workers_for``)."""


def _int64(x: ArrayLike) -> np.ndarray:
    """A (B, L) torch tensor or numpy array as a contiguous int64 numpy array."""
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
        n_gpus = torch.cuda.device_count() if config.device.startswith("cuda") else 0
        self.slots = plan_slots(
            config.workers,
            config.device,
            threads=config.threads,
            cores=available_cores(),
            n_gpus=n_gpus,
            procs_per_gpu=config.procs_per_gpu,
        )
        self.allocation = allocate(
            self.model.n_students, config.workers, config.replicate, config.max_students_per_worker
        )
        ctx = mp.get_context("spawn")
        self._workers = [
            WorkerHandle(slot, students, self.cohort_dir, config, ctx, self._closed)
            for slot, students in zip(self.slots, self.allocation, strict=True)
        ]
        self._lock = threading.Lock()  # guards the in-flight counts
        self._ids = itertools.count()
        self.last_worker_seconds: dict[int, float] = {}
        """Compute seconds inside each worker that ran the last batch (diagnostics)."""
        self._monitor: threading.Thread | None = None
        torch.set_num_threads(1)
        try:
            for w in self._workers:
                w.spawn()
            for w in self._workers:
                w.await_ready()
        except BaseException:
            self.close()
            raise
        if config.health_interval_s > 0:
            self._monitor = threading.Thread(
                target=self._watch, name="shoal-pool-monitor", daemon=True
            )
            self._monitor.start()

    @property
    def n_students(self) -> int:
        return self.model.n_students

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop every worker (gracefully, then by force) and the monitor. Idempotent."""
        if not self._closed.is_set():
            torch.set_num_threads(self._parent_threads)
        self._closed.set()
        for w in self._workers:
            got = w.lock.acquire(timeout=1.0)
            try:
                w.stop(graceful=got)
            finally:
                if got:
                    w.lock.release()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=5.0)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ health

    def _watch(self) -> None:
        """Restart idle workers whose process died, as soon as the death is seen."""
        interval = self.config.health_interval_s
        while not self._closed.is_set():
            procs = [(w, w.process) for w in self._workers]  # read once: restarts replace them
            sentinels = {p.sentinel: (w, p) for w, p in procs if p is not None}
            down = [(w, None) for w, p in procs if p is None]  # backing off
            ready = wait(list(sentinels), timeout=interval) if sentinels else []
            if not sentinels:
                self._closed.wait(interval)
            busy, failed = self._restart_dead([sentinels[s] for s in ready] + down)
            if failed:  # back off: a worker that cannot start should not spin the monitor
                self._closed.wait(interval)
            elif busy:
                self._closed.wait(min(interval, 0.05))

    def _restart_dead(self, todo: list[tuple[WorkerHandle, object]]) -> tuple[bool, bool]:
        """Restart each worker still running the process that died (None: none running) once
        its backoff is over; whether one was busy (a dispatch holds it and will restart it
        itself) and whether a restart failed."""
        busy = failed = False
        for w, proc in todo:
            if self._closed.is_set() or not w.lock.acquire(blocking=False):
                busy = True
                continue
            try:
                if w.process is proc and time.monotonic() >= w.retry_at:
                    w.restart()
            except BackingOff:
                failed = True
            except Exception:  # logged by the handle; retried when the backoff ends
                failed = True
            finally:
                w.lock.release()
        return busy, failed

    def check_health(self, timeout_s: float = 10.0) -> list[WorkerStatus]:
        """Ping every worker; restart any that is dead or does not answer within the timeout."""
        for w in self._workers:
            with w.lock:
                try:
                    w.ensure_alive()
                    req = next(self._ids)
                    w.send(Ping(req))
                    w.recv(req, timeout_s)
                except Dead:
                    w.restart()
        return self.status()

    def status(self) -> list[WorkerStatus]:
        """Where each worker runs, what it holds, whether it is alive."""
        return [w.status() for w in self._workers]

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
        batch = Batch(
            _int64(input_ids),
            None if attention_mask is None else _int64(attention_mask),
            None if token_type_ids is None else _int64(token_type_ids),
            self.model.check_k(k),
        )
        with self._lock:
            plan = workers_for(
                batch.k, self.allocation, {i: w.inflight for i, w in enumerate(self._workers)}
            )
            for i in plan:
                self._workers[i].inflight += 1
        held: list[int] = []
        try:
            for i in sorted(plan):  # a fixed lock order: concurrent batches cannot deadlock
                self._workers[i].lock.acquire()
                held.append(i)
            partials = self._dispatch(plan, batch)
        finally:
            for i in held:
                self._workers[i].lock.release()
            with self._lock:
                for i in plan:
                    self._workers[i].inflight -= 1
        total = np.sum([partials[i] for i in sorted(plan)], axis=0, dtype=np.float32)
        return self.head_runner.finish(torch.from_numpy(total))

    def _dispatch(self, plan: Plan, batch: Batch) -> dict[int, np.ndarray]:
        """Send to every planned worker, then gather; retry the part of a crashed worker."""
        self._hook("before_send", plan)
        sent = {i: self._send_run(i, plan[i], batch) for i in plan}
        self._hook("after_send", plan)
        out: dict[int, np.ndarray] = {}
        seconds: dict[int, float] = {}
        failure: Exception | None = None
        for i in plan:  # gather every reply even after a failure, so no stale replies remain
            try:
                msg = self._gather(i, plan[i], batch, sent[i])
            except WorkerCrashed as e:
                failure = failure or e
                continue
            if isinstance(msg, Done):
                out[i], seconds[i] = msg.partial_sum, msg.seconds
            else:
                failure = failure or WorkerError(
                    f"worker {i} ({self._workers[i].where}) failed on a batch: "
                    f"{getattr(msg, 'message', msg)}"
                )
        self.last_worker_seconds = seconds
        if failure is not None:
            raise failure
        return out

    def _send_run(self, i: int, students: tuple[int, ...], batch: Batch) -> int | None:
        """Send worker i its part of the batch: the request id, or None if it could not be
        sent (handled as a crash when gathering)."""
        w = self._workers[i]
        req = next(self._ids)
        try:
            w.ensure_alive()
            w.send(Run(req, batch, students))
        except (Dead, WorkerCrashed):
            return None
        return req

    def _gather(
        self, i: int, students: tuple[int, ...], batch: Batch, req: int | None
    ) -> FromWorker:
        """Worker i's reply to request ``req``; a worker that dies is restarted and its part
        sent again, up to ``config.retries`` times. Raises ``WorkerCrashed`` after that, or
        when the restart itself fails."""
        w = self._workers[i]
        for attempt in range(self.config.retries + 1):
            try:
                if req is None:
                    raise Dead(exit_reason(w.process) if w.process else "is not running")
                return w.recv(req, self.config.request_timeout_s)
            except Dead as e:
                where = w.where
                w.restart()  # raises WorkerCrashed if the worker cannot start again
                if attempt == self.config.retries:
                    raise WorkerCrashed(
                        f"worker {i} ({where}) {e} while running a batch of shape "
                        f"{batch.shape} with students {list(students)}; tried "
                        f"{attempt + 1} time(s), the batch failed; the worker was restarted"
                    ) from None
                log.warning("worker %d (%s) %s; retrying its part of the batch", i, where, e)
                self._hook("before_send", {i: students})
                req = self._send_run(i, students, batch)
                self._hook("after_send", {i: students})
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _hook(self, phase: str, plan: Plan) -> None:
        if self.dispatch_hook is not None:
            self.dispatch_hook(phase, {i: self._workers[i].info.get("pid", -1) for i in plan})
