"""One timing record per request feeds the Prometheus histograms, a log line and the response
headers (TEI style: ``x-total-time``, ``x-queue-time``, ``x-inference-time`` in ms, plus
``x-students-used``). Every response carries an ``x-request-id`` that its log lines quote; an
unexpected error is logged in full under that id and answered with a 500 that names only the
id. Batch-level counters come from the engine's batch records; worker counts from the
runtime's status."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.serve.api.guard import refuse
from shoal.serve.engine import Engine
from shoal.serve.failures import FAILURE_STAGES
from shoal.serve.results import BatchRecord, Prediction

log = logging.getLogger("shoal.serve.access")

INFERENCE_ROUTES = ("/predict", "/v1/classify", "/classify", "/", "/invocations")
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
)
"""Up to two minutes: past the default 10 s deadline, so a slow tail shows as itself."""


@dataclass(frozen=True)
class RequestTiming:
    """What the engine spent on one request (all its inputs): the slowest input's queue and
    inference time, the fewest students any input used."""

    queue_s: float
    inference_s: float
    students_used: int
    n_inputs: int

    @classmethod
    def of(cls, predictions: Sequence[Prediction]) -> RequestTiming:
        return cls(
            queue_s=max(p.queue_s for p in predictions),
            inference_s=max(p.inference_s for p in predictions),
            students_used=min(p.k for p in predictions),
            n_inputs=len(predictions),
        )


class ServeMetrics:
    """The app's Prometheus metrics, in their own registry (one per app)."""

    def __init__(self, engine: Engine, workers: Callable[[], Sequence[Any]] | None = None) -> None:
        self.registry = r = CollectorRegistry()
        if workers is not None:
            r.register(_WorkerCollector(workers))
        self.latency = Histogram(
            "shoal_request_latency_seconds",
            "Time from request to answer.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "shoal_queue_time_seconds",
            "Time a request waited to run.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "shoal_inference_time_seconds",
            "Execution time of the batch that ran a request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "shoal_batch_size",
            "Inputs per executed batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.requests = Counter(
            "shoal_requests", "Inference requests by HTTP status.", ["status"], registry=r
        )
        self.rejected = Counter(
            "shoal_rejected",
            "Requests refused by admission control (429: buffer full; 503: draining).",
            ["reason"],
            registry=r,
        )
        self.padded_tokens = Counter(
            "shoal_padded_tokens",
            "Token positions computed (batch size x padded length).",
            registry=r,
        )
        self.padding_tokens = Counter(
            "shoal_padding_tokens", "Padding positions computed (padded - real).", registry=r
        )
        self.real_tokens = Counter("shoal_real_tokens", "Real tokens computed.", registry=r)
        self.batches = Counter(
            "shoal_batches", "Executed batches, by students used.", ["k"], registry=r
        )
        depth = Gauge("shoal_queue_depth", "Requests waiting in the buffer.", registry=r)
        depth.set_function(lambda: engine.queue_depth)
        capacity = Gauge(
            "shoal_queue_capacity",
            "Inputs admitted to the buffer now; beyond it requests get 429.",
            registry=r,
        )
        capacity.set_function(lambda: engine.queue_capacity)
        active = Gauge("shoal_active_students", "Students the pruning policy uses now.", registry=r)
        active.set_function(lambda: engine.current_k)
        scale = Gauge(
            "shoal_cost_scale",
            "Measured over profiled batch time of recent batches (1: as profiled); the pruning "
            "policy scales its cost model by it.",
            registry=r,
        )
        scale.set_function(lambda: engine.cost_scale)
        self.connections_closed = Counter(
            "shoal_connections_closed",
            "Connections closed or refused by a limit of the HTTP server, by reason.",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "shoal_failures",
            "Server-side failures by stage: runtime (the runtime raised on a batch), output "
            "(non-finite logits, or not one row per input), answer, engine, request (outside "
            "the engine, e.g. tokenising), self_check.",
            ["stage"],
            registry=r,
        )
        for stage in FAILURE_STAGES:  # every stage shows from the start, at 0
            self.failures.labels(stage=stage)
        engine.subscribe_failures(lambda stage: self.failures.labels(stage=stage).inc())
        engine.subscribe(self.observe_batch)
        self.request_listeners: list[Callable[[int, float], None]] = []
        """Also called with (status, seconds) of every request (the dashboard's feed)."""

    def observe_batch(self, batch: BatchRecord) -> None:
        self.batch_size.observe(batch.size)
        self.padded_tokens.inc(batch.padded_tokens)
        self.padding_tokens.inc(batch.padded_tokens - batch.real_tokens)
        self.real_tokens.inc(batch.real_tokens)
        self.batches.labels(k=str(batch.k)).inc()

    def observe_request(self, status: int, total_s: float, timing: RequestTiming | None) -> None:
        for listener in self.request_listeners:
            listener(status, total_s)
        self.requests.labels(status=str(status)).inc()
        if status == 429:
            self.rejected.labels(reason="full").inc()
        elif status == 503:
            self.rejected.labels(reason="draining").inc()
        self.latency.observe(total_s)
        if timing is not None:
            self.queue.observe(timing.queue_s)
            self.inference.observe(timing.inference_s)

    def connection_counter(self, reasons: Sequence[str]) -> Callable[[str], None]:
        """What counts one connection closed by a limit, by reason (the HTTP server's
        ``on_close``); each of ``reasons`` shows from the start, at 0."""
        for reason in reasons:
            self.connections_closed.labels(reason=reason)
        return lambda reason: self.connections_closed.labels(reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerCollector:
    """``shoal_workers_alive`` and ``shoal_worker_restarts_total{worker}`` from the runtime's status
    (a list of ``WorkerStatus``), read at each scrape."""

    def __init__(self, workers: Callable[[], Sequence[Any]]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        status = list(self.workers())
        alive = GaugeMetricFamily(
            "shoal_workers_alive", "Worker processes alive now, with their students loaded."
        )
        alive.add_metric([], sum(1 for w in status if w.alive))
        restarts = CounterMetricFamily(
            "shoal_worker_restarts",
            "Worker restarts tried after a crash or hang, by worker.",
            labels=["worker"],
        )
        for w in status:
            restarts.add_metric([str(w.index)], w.restarts)
        yield alive
        yield restarts


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def _request_id(scope: Scope) -> str:
    """The id a proxy in front gave the request (``x-request-id``, when short and plain), so
    both logs quote one id; else a new one."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
                return text
    return new_request_id()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


class ObserveMiddleware:
    """Pure ASGI middleware: adds the timing headers, records metrics, logs one line."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, request_id_header: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.request_id_header = request_id_header
        """False where the proxy in front adds ``x-request-id`` to the answer itself."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        path = scope.get("path", "")
        inference = path in INFERENCE_ROUTES and scope.get("method") == "POST"
        state["request_id"] = rid = _request_id(scope)
        done = False
        started = False

        def finish(status: int) -> float:
            nonlocal done
            total = time.perf_counter() - start
            if done:
                return total
            done = True
            timing: RequestTiming | None = state.get("timing")
            if inference:
                self.metrics.observe_request(status, total, timing)
            level = logging.INFO if inference else logging.DEBUG
            if timing is None:
                log.log(
                    level,
                    "%s %s %d total_ms=%s request_id=%s",
                    scope.get("method"),
                    path,
                    status,
                    _ms(total),
                    rid,
                )
            else:
                log.log(
                    level,
                    "%s %s %d total_ms=%s queue_ms=%s inference_ms=%s k=%d inputs=%d request_id=%s",
                    scope.get("method"),
                    path,
                    status,
                    _ms(total),
                    _ms(timing.queue_s),
                    _ms(timing.inference_s),
                    timing.students_used,
                    timing.n_inputs,
                    rid,
                )
            return total

        async def send_observed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                total = finish(message["status"])
                headers = MutableHeaders(scope=message)
                headers["x-total-time"] = _ms(total)
                if self.request_id_header:
                    headers["x-request-id"] = rid
                timing: RequestTiming | None = state.get("timing")
                if timing is not None:
                    headers["x-queue-time"] = _ms(timing.queue_s)
                    headers["x-inference-time"] = _ms(timing.inference_s)
                    headers["x-students-used"] = str(timing.students_used)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            log.exception("request_id=%s %s %s failed", rid, scope.get("method"), path)
            if started:
                finish(500)
                raise
            await refuse(send_observed, 500, "backend", internal_error_message(rid), close=False)


def internal_error_message(request_id: str) -> str:
    """What a client sees of an unexpected failure: no internals, the id to quote."""
    return (
        f"the server failed on this request (request id {request_id}); the server log has the "
        "details under that id; retry, and report it if it persists"
    )
