"""The serving engine: an asyncio front over the scheduler and a runtime.

Each request gets a future. One loop takes turns that read as the three roles: take a plan from
the scheduler, execute it on the runtime (in a worker thread, so the event loop stays free),
feed the result back to the waiting futures. The loop sleeps on an ``asyncio.Event`` that every
submission sets, so it never polls. The scheduler is only ever touched from the event loop.

No torch here: a plan becomes a ``Batch`` of numpy arrays, and the runtime makes its tensors.

Failures: a batch the runtime raises on, logits that are not finite (per input) or not one row
per input, and an error while answering a batch or in a turn of the loop each fail the requests
concerned with a ``BackendError`` (a 500) and are counted by ``record_failure`` (which the API
also calls for a request that fails outside the engine, e.g. while tokenising); ``failures.py``
keeps the count, the rate-limited log and the rule ``failing`` (``/health``) follows. While
failing, the engine reruns the model's self-check when it is due and nothing else is to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shoal.problems import apply
from shoal.serve.batch import Batch, encoded
from shoal.serve.buffer import Item
from shoal.serve.costmodel import CostModel
from shoal.serve.encoder import TokenizedInput
from shoal.serve.errors import BackendError, DeadlineExceeded, Draining
from shoal.serve.failures import Failures
from shoal.serve.results import BatchRecord, Prediction
from shoal.serve.runtime.selfcheck import non_finite, shape_problem
from shoal.serve.scheduler import Plan, Scheduler

log = logging.getLogger("shoal.serve.engine")


class BatchRuntime(Protocol):
    """What the engine needs from a runtime (``shoal.serve.runtime.Runtime`` or a fake)."""

    cost_model: CostModel

    def run_batch(self, batch: Batch) -> Any:
        """Blocking: (B, C) float32 logits of the batch's first k students, as a numpy array
        (or anything ``numpy.asarray`` reads)."""
        ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ engine


class BadLogits(BackendError):
    """The runtime returned logits that cannot be answered from (not one row per input)."""


@dataclass(frozen=True)
class BatchOutput:
    """One executed batch: logits and scores, a row per item (same order)."""

    logits: list[list[float]]
    probs: list[list[float]]
    non_finite: tuple[int, ...] = ()
    """Rows whose logits hold a NaN or an inf: those items fail instead of being answered."""
    what: str = ""
    """What the non-finite values are ('NaN', 'inf', 'NaN and inf'); '' when none."""


@dataclass
class Ticket:
    """A queued request: the ids and futures of its inputs."""

    engine: Engine
    ids: list[int] = field(default_factory=list)
    futures: list[asyncio.Future[Prediction]] = field(default_factory=list)

    async def wait(self) -> list[Prediction]:
        """All predictions, in input order. If one input fails (or the caller is cancelled),
        the others are withdrawn and the error propagates."""
        try:
            return list(await asyncio.gather(*self.futures))
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Withdraw every input still queued (synchronously: none of them will run)."""
        for item_id in self.ids:
            self.engine.cancel(item_id)


class Engine:
    """Async request front + the schedule -> execute -> update loop."""

    def __init__(
        self,
        runner: BatchRuntime,
        scheduler: Scheduler,
        *,
        pad_id: int = 0,
        default_deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        self_check: Callable[[], None] | None = None,
        score_function: str = "softmax",
    ) -> None:
        """``self_check``: blocking, raises when the model fails its probe (run in the
        execute thread while the engine is failing); None: only batches end a failure streak.
        ``score_function``: what turns the head's logits into scores ('softmax', 'sigmoid'
        or 'none', ``shoal.problems.FUNCTIONS``)."""
        self.runner = runner
        self.score_function = score_function
        self.self_check = self_check
        self.scheduler = scheduler
        self.pad_id = pad_id
        self.default_deadline_s = default_deadline_s
        self.clock = clock
        self.accepting = True
        self._futures: dict[int, asyncio.Future[Prediction]] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="shoal-execute")
        self._observers: list[Callable[[BatchRecord], None]] = []
        self.inflight = 0
        """Requests in the batch executing now."""
        self.failures = Failures(log, clock)
        """Failures in a row, the last one's reason, their observers and log."""

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the loop on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="shoal-engine")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop accepting, wait until every accepted request is answered. False on timeout,
        in which case the requests still pending are failed with ``Draining``."""
        self.accepting = False
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            for item in list(self.scheduler.buffer.items()):
                self.scheduler.cancel(item.id)
                self._fail(item.id, Draining("the server shut down before this request ran"))
            return False

    async def stop(self) -> None:
        """Stop the loop; pending requests fail with ``Draining``."""
        self.accepting = False
        for item in list(self.scheduler.buffer.items()):
            self.scheduler.cancel(item.id)
            self._fail(item.id, Draining("the server shut down before this request ran"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item_id in list(self._futures):  # e.g. the batch that was executing
            self._fail(item_id, Draining("the server shut down before this request ran"))
        self._executor.shutdown(wait=True)

    def subscribe(self, observer: Callable[[BatchRecord], None]) -> None:
        """Call ``observer`` with a ``BatchRecord`` after every executed batch."""
        self._observers.append(observer)

    def subscribe_failures(self, observer: Callable[[str], None]) -> None:
        """Call ``observer`` with the stage (``failures.FAILURE_STAGES``) of every failure."""
        self.failures.subscribe(observer)

    # ---------------------------------------------------------------- front

    def submit(
        self,
        encoded: TokenizedInput,
        *,
        min_k: int = 1,
        deadline_s: float | None = None,
        past_capacity: bool = False,
    ) -> tuple[int, asyncio.Future[Prediction]]:
        """Queue one input; returns its id and the future of its prediction.

        Raises ``Draining``, ``BufferFull`` (admission is bounded; ``past_capacity`` queues
        it anyway, for a request ``enqueue`` admitted whole) or ``InvalidRequest``.
        """
        self._check_accepting()
        now = self.clock()
        deadline = deadline_s if deadline_s is not None else self.default_deadline_s
        item = Item(
            id=next(self._ids),
            n_tokens=encoded.n_tokens,
            arrival=now,
            deadline=None if deadline is None else now + deadline,
            min_k=min_k,
            payload=encoded,
        )
        self.scheduler.submit(item, now, past_capacity=past_capacity)
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._futures[item.id] = future
        self._idle.clear()
        self._wake.set()
        return item.id, future

    def _check_accepting(self) -> None:
        if not self.accepting or not self.running:
            raise Draining("the server is shutting down; retry on another replica")

    def enqueue(
        self, inputs: Sequence[TokenizedInput], *, min_k: int = 1, deadline_s: float | None = None
    ) -> Ticket:
        """Queue a request's inputs, all or none: if one is refused, the others are withdrawn
        and the error propagates. A request larger than the queue capacity is queued only
        into an empty queue."""
        self._check_accepting()
        past = self.scheduler.admit(len(inputs))
        ticket = Ticket(self)
        try:
            for enc in inputs:
                item_id, future = self.submit(
                    enc, min_k=min_k, deadline_s=deadline_s, past_capacity=past
                )
                ticket.ids.append(item_id)
                ticket.futures.append(future)
        except BaseException:
            ticket.cancel()
            raise
        return ticket

    async def predict(
        self, inputs: Sequence[TokenizedInput], *, min_k: int = 1, deadline_s: float | None = None
    ) -> list[Prediction]:
        """Queue the inputs and wait for their predictions."""
        return await self.enqueue(inputs, min_k=min_k, deadline_s=deadline_s).wait()

    def cancel(self, item_id: int) -> bool:
        """Forget a request: dropped before compute if still queued. False if already done."""
        future = self._futures.pop(item_id, None)
        self.scheduler.cancel(item_id)
        self._check_idle()
        if future is None or future.done():
            return False
        future.cancel()
        return True

    # ---------------------------------------------------------------- loop

    async def _run(self) -> None:
        while True:
            try:
                ran = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad turn kill the server
                self.record_failure(
                    "engine", f"a turn of the engine failed ({type(exc).__name__})", exc
                )
                ran = False
            if not ran:
                await self._sleep()

    async def step(self) -> bool:
        """One turn: schedule -> execute -> update (with nothing to run: the self-check, when
        due). False when nothing was ready."""
        plan = self._schedule()
        if plan is None:
            return await self._recheck()
        result, seconds = await self._execute(plan)
        self._update(plan, result, seconds)
        return True

    def _schedule(self) -> Plan | None:
        now = self.clock()
        for item in self.scheduler.expire(now):
            self._fail(
                item.id,
                DeadlineExceeded(
                    f"the deadline passed after {now - item.arrival:.3f} s in the queue; "
                    "retry later or allow a longer deadline_ms"
                ),
            )
        plan = self.scheduler.next_plan(now)
        if plan is None:
            self._check_idle()
            return None
        # Requests whose caller went away without cancel() (defensive): skip their compute.
        live = tuple(it for it in plan.items if self._pending(it.id))
        if not live:
            self._check_idle()
            return None
        if len(live) < len(plan.items):
            plan = Plan(live, plan.k, max(it.n_tokens for it in live), plan.bin)
        return plan

    async def _execute(self, plan: Plan) -> tuple[BatchOutput | Exception, float]:
        """Run the plan in the worker thread; the output (or the error) and its duration."""
        self.inflight = len(plan.items)
        loop = asyncio.get_running_loop()
        start = self.clock()
        try:
            output = await loop.run_in_executor(self._executor, self._run_batch, plan)
        except Exception as exc:  # the batch fails (``_update`` counts it); the server goes on
            return exc, self.clock() - start
        finally:
            self.inflight = 0
        return output, self.clock() - start

    def _run_batch(self, plan: Plan) -> BatchOutput:
        # Worker thread: build the padded (B, L) batch, run it, score it.
        batch = Batch.from_items(plan.items, plan.padded_length, self.pad_id, k=plan.k)
        logits = np.asarray(self.runner.run_batch(batch), dtype=np.float32)  # (B, C)
        problem = shape_problem(logits, len(plan.items))
        if problem is not None:
            raise BadLogits(f"the runtime returned {problem} at k={plan.k}")
        finite = np.asarray(np.isfinite(logits).all(axis=1))  # (B,)
        bad = tuple(int(i) for i in np.flatnonzero(~finite))
        what = non_finite(logits[~finite]) if bad else ""
        # the scores of the bad rows are never read; zeros keep them free of warnings
        probs = apply(self.score_function, np.where(finite[:, None], logits, 0.0)).tolist()
        return BatchOutput(logits.tolist(), probs, bad, what)

    def _update(self, plan: Plan, result: BatchOutput | Exception, seconds: float) -> None:
        if isinstance(result, BaseException):
            if isinstance(result, BadLogits):  # its message names shapes only
                self.record_failure("output", str(result), result)
            else:
                self.record_failure(
                    "runtime",
                    f"the runtime failed on a batch of {len(plan.items)} at k={plan.k} "
                    f"({type(result).__name__})",
                    result,
                )
            for it in plan.items:
                self._fail(it.id, BackendError(f"inference failed: {result!r}"))
        else:
            pending = [self._futures.get(it.id) for it in plan.items]  # _answer pops them
            try:
                self._answer(plan, result, seconds)
            except Exception as exc:  # answer what is left with a 500, never leave it waiting
                self.record_failure(
                    "answer",
                    f"answering a batch of {len(plan.items)} failed ({type(exc).__name__})",
                    exc,
                )
                for it, future in zip(plan.items, pending, strict=True):
                    self._futures.pop(it.id, None)
                    if future is not None and not future.done():
                        future.set_exception(BackendError(f"answering the batch failed: {exc!r}"))
        self._check_idle()

    def _answer(self, plan: Plan, result: BatchOutput, seconds: float) -> None:
        """Resolve the plan's futures from its output, feed the scheduler and observers."""
        start = self.clock() - seconds
        bad = set(result.non_finite)
        for row, (it, logits, p) in enumerate(
            zip(plan.items, result.logits, result.probs, strict=True)
        ):
            if row in bad:
                self._fail(
                    it.id,
                    BackendError(
                        f"inference failed: the model gave non-finite logits ({result.what}) "
                        f"for this input at k={plan.k}"
                    ),
                )
                continue
            future = self._futures.pop(it.id, None)
            if future is None or future.done():
                continue
            future.set_result(
                Prediction(
                    label_id=max(range(len(p)), key=p.__getitem__),
                    scores=tuple(p),
                    logits=tuple(logits),
                    k=plan.k,
                    queue_s=max(0.0, start - it.arrival),
                    inference_s=seconds,
                    batch_size=len(plan.items),
                    truncated=encoded(it).truncated,
                )
            )
        if bad:  # the forward pass ran but its answer is unusable: a failure, not a success
            self.record_failure(
                "output",
                f"the model gave non-finite logits ({result.what}) for {len(bad)} of "
                f"{len(plan.items)} inputs at k={plan.k}",
            )
        else:
            self.failures.succeeded("a batch ran")
        self.scheduler.observe(plan, seconds)
        record = BatchRecord(len(plan.items), plan.k, plan.padded_length, plan.real_tokens, seconds)
        for observer in self._observers:
            try:
                observer(record)
            except Exception:  # metrics must never break serving
                log.exception("batch observer failed")

    # ---------------------------------------------------------------- failures

    def record_failure(self, stage: str, reason: str, error: BaseException | None = None) -> None:
        """Count one failure (event loop only); see ``Failures.record``."""
        self.failures.record(stage, reason, error)

    @property
    def batch_failures(self) -> int:
        """Failures in a row (failed batches, requests failing outside a batch, self-checks);
        0 once a forward pass succeeds."""
        return self.failures.in_a_row

    @property
    def failing(self) -> str | None:
        """Why the engine cannot be trusted to answer now (``Failures.failing``), or None."""
        return self.failures.failing

    @property
    def _recheck_at(self) -> float | None:
        """When the self-check is due, if it reruns at all (failing, not shutting down)."""
        if self.self_check is None or not self.accepting:
            return None
        return self.failures.recheck_at

    async def _recheck(self) -> bool:
        """While failing and idle, rerun the self-check ``RECHECK_S`` after the last failure:
        a pass ends the streak (the runtime recovered with no traffic to show it), a failure
        counts. False when none was due."""
        due = self._recheck_at
        if due is None or self.clock() < due or self.self_check is None:
            return False
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.self_check)
        except Exception as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            self.record_failure("self_check", f"the self-check failed: {problem}", exc)
        else:
            self.failures.succeeded("the self-check passed")
        return True

    async def _sleep(self) -> None:
        """Wait for a submission, or for a timer when one is due: the FIFO buffer's wait, a
        queued deadline, the policy's hold before raising k again, or the next self-check."""
        self._wake.clear()
        timeout = self._next_timer(self.clock())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        if (
            timeout is not None
            and not self._wake.is_set()
            and not self.scheduler.buffer.ready(self.clock())
        ):
            self.scheduler.decide(self.clock())  # idle: let k recover

    def _next_timer(self, now: float) -> float | None:
        sched = self.scheduler
        times: list[float] = []
        if len(sched):
            oldest = sched.buffer.oldest_arrival
            if oldest is not None:
                times.append(oldest + sched.buffer.config.max_wait_s)
            times += [it.deadline for it in sched.buffer.items() if it.deadline is not None]
        elif sched.current_k < sched.config.policy.n_students and sched.config.policy.enabled:
            times.append(now + max(sched.config.policy.up_hold_s, 0.01))
        due = self._recheck_at
        if due is not None:  # failing: the next self-check
            times.append(due)
        return max(0.0, min(times) - now) if times else None

    # ---------------------------------------------------------------- helpers

    def _pending(self, item_id: int) -> bool:
        future = self._futures.get(item_id)
        return future is not None and not future.done()

    def _fail(self, item_id: int, error: BaseException) -> None:
        future = self._futures.pop(item_id, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def _check_idle(self) -> None:
        if not len(self.scheduler) and not self.inflight and not self._futures:
            self._idle.set()

    @property
    def seconds_since_failure(self) -> float:
        """Seconds since the last failure (infinite if none failed)."""
        return self.clock() - self.failures.last_at

    @property
    def queue_depth(self) -> int:
        """Requests waiting in the buffer."""
        return len(self.scheduler)

    @property
    def queue_capacity(self) -> int:
        """Inputs admitted to the buffer now (it follows the measured speed when derived)."""
        return self.scheduler.capacity

    @property
    def current_k(self) -> int:
        """Students the policy chose at its last decision."""
        return self.scheduler.current_k

    @property
    def cost_scale(self) -> float:
        """Measured over profiled batch time of recent batches (the policy's calibration)."""
        return self.scheduler.cost_scale
