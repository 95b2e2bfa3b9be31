"""Open-loop HTTP load generator for any server that speaks the TEI-style ``/predict`` API.

Open loop: each request leaves at its scheduled offset whether or not earlier ones were
answered, so a slow server faces the offered load instead of quietly throttling the client.
Latency is measured from the *scheduled* send time, so any lag on the client side is charged
to the request rather than hidden (no coordinated omission).

The pieces: request and answer shapes in ``shoal.bench.protocol``, the raw HTTP/1.1
transport in ``shoal.bench.rawhttp``, the ``/metrics`` timeline in
``shoal.bench.metrics_timeline`` and the records a run returns in ``shoal.bench.records``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

import httpx

from shoal.bench.metrics_timeline import MetricsPoller
from shoal.bench.protocol import APIS, answer_label, label_index, request_for, timing_headers
from shoal.bench.rawhttp import RawHTTPClient, RawResponse
from shoal.bench.records import ERROR, TIMEOUT, Record, RunResult
from shoal.bench.workload import Request, Workload

Client = Literal["httpx", "raw"]
CLIENTS: tuple[Client, ...] = ("httpx", "raw")
"""Load generator transports: httpx's pooled client, or :class:`RawHTTPClient`."""

Transport = httpx.AsyncClient | RawHTTPClient
Timing = tuple[float | None, float | None, int | None]
"""Queue ms, inference ms and students used, from the response headers."""


async def run_load(
    url: str,
    workload: Workload,
    *,
    timeout_s: float = 10.0,
    poll_s: float = 0.5,
    labels: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    max_connections: int = 256,
    drain_s: float | None = None,
    client: Client = "httpx",
    api: str = "tei",
) -> RunResult:
    """Send a workload open-loop and record every request; stops by itself.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8000`` (a trailing ``/predict`` is
            accepted).
        workload: the requests and their offsets.
        timeout_s: per-request deadline, from the actual send to the full response.
        poll_s: seconds between scrapes of ``GET /metrics``.
        labels: label strings by class index; default ``workload.label_names``.
        headers: extra HTTP headers on every request (e.g. an API key).
        extra: extra JSON fields merged into every ``/predict`` body.
        max_connections: size of the connection pool; requests beyond it wait for a
            connection, and that wait counts towards their latency and timeout.
        drain_s: how long to wait for answers after the last send; default ``timeout_s + 1``.
            Requests still open then are recorded as timeouts.
        client: 'httpx' (pooled, at most ``max_connections``), or 'raw'
            (:class:`RawHTTPClient`: one keep-alive connection per request in flight, a
            constant cost per request; for overload runs with hundreds in flight).
        api: the request shape, one of ``APIS``.

    Returns:
        The run's records (exactly one per request, in workload order) and timeline.
    """
    if api not in APIS:
        raise ValueError(f"api={api!r} must be one of {APIS}")
    base = url.rstrip("/").removesuffix("/predict")
    loop = _OpenLoop(
        workload.requests,
        _transport(client, base, headers, max_connections, timeout_s),
        api=api,
        labels=list(labels if labels is not None else workload.label_names),
        extra=extra,
        timeout_s=timeout_s,
    )
    metrics = MetricsPoller(base, headers, poll_s)
    drain = timeout_s + 1.0 if drain_s is None else drain_s
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = _Clock()
    try:
        # The baseline scrape comes before any traffic; the clock restarts after it so a
        # slow scrape never makes the first sends late.
        await metrics.baseline()
        clock.restart()
        polling = asyncio.create_task(metrics.poll(clock))
        await loop.dispatch(clock)
        await loop.drain(clock, deadline=loop.last_offset_s + drain)
        await metrics.finish(polling, clock)
    finally:
        await loop.transport.aclose()
        await metrics.aclose()
    end = clock()
    return RunResult(
        url=base,
        started_at=started_at,
        duration_s=end,
        offered_duration_s=workload.duration_s,
        records=loop.records(end),
        timeline=metrics.timeline,
        metrics_available=bool(metrics.timeline),
    )


def run_load_sync(url: str, workload: Workload, **kwargs: Any) -> RunResult:
    """``run_load`` in a fresh event loop, for callers that are not async (the CLI)."""
    return asyncio.run(run_load(url, workload, **kwargs))


class _Clock:
    """Seconds since the run started (or since the last :meth:`restart`)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self._t0


def _transport(
    client: Client,
    base: str,
    headers: Mapping[str, str] | None,
    max_connections: int,
    timeout_s: float,
) -> Transport:
    """The client that sends the workload's requests."""
    if client == "raw":
        return RawHTTPClient(base, headers)
    if client == "httpx":
        # trust_env=False: a benchmark must reach the server directly, never through a
        # proxy configured in the environment.
        return httpx.AsyncClient(
            base_url=base,
            headers=dict(headers or {}),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
        )
    raise ValueError(f"client={client!r} must be one of {CLIENTS}")


class _OpenLoop:
    """Sends each request at its offset, one task per request, and keeps one record slot
    per request; :meth:`records` fills the slots of requests never answered."""

    def __init__(
        self,
        requests: Sequence[Request],
        transport: Transport,
        *,
        api: str,
        labels: list[str],
        extra: Mapping[str, Any] | None,
        timeout_s: float,
    ) -> None:
        self.requests = requests
        self.transport = transport
        self.api, self.labels, self.extra, self.timeout_s = api, labels, extra, timeout_s
        self._records: list[Record | None] = [None] * len(requests)
        self._starts = [r.offset_s for r in requests]  # actual send times, for cancelled ones
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def last_offset_s(self) -> float:
        return self.requests[-1].offset_s if self.requests else 0.0

    async def dispatch(self, now: Callable[[], float]) -> None:
        """Start every request at its offset (open loop: never waits for an answer)."""
        for i, req in enumerate(self.requests):
            delay = req.offset_s - now()
            if delay > 0:
                await asyncio.sleep(delay)
            self._tasks.append(asyncio.create_task(self._send(i, req, now)))

    async def drain(self, now: Callable[[], float], deadline: float) -> None:
        """Wait for the answers until ``deadline`` (run time); cancel the requests still open."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=max(0.0, deadline - now()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def records(self, end: float) -> list[Record]:
        """One record per request in workload order; the unanswered ones as timeouts at ``end``."""
        return [
            r
            if r is not None
            else Record(
                index=i,
                offset_s=q.offset_s,
                start_s=self._starts[i],
                end_s=end,
                latency_s=end - q.offset_s,
                status=TIMEOUT,
                predicted=None,
                gold=q.label,
            )
            for i, (r, q) in enumerate(zip(self._records, self.requests, strict=True))
        ]

    async def _send(self, i: int, req: Request, now: Callable[[], float]) -> None:
        start = self._starts[i] = now()
        status, predicted, (queue_ms, inference_ms, students) = await self._ask(req)
        end = now()
        self._records[i] = Record(
            index=i,
            offset_s=req.offset_s,
            start_s=start,
            end_s=end,
            latency_s=end - req.offset_s,
            status=status,
            predicted=predicted,
            gold=req.label,
            queue_ms=queue_ms,
            inference_ms=inference_ms,
            students_used=students,
        )

    async def _ask(self, req: Request) -> tuple[int | str, int | None, Timing]:
        """The status, the predicted class (200s only) and the timing headers of one request."""
        timing: Timing = (None, None, None)
        try:
            path, body = request_for(self.api, req, self.extra)
            resp: httpx.Response | RawResponse = await asyncio.wait_for(
                self.transport.post(path, json=body), self.timeout_s
            )
            timing = timing_headers(resp.headers)
            predicted = None
            if resp.status_code == 200:
                predicted = label_index(answer_label(self.api, resp.json()), self.labels)
            return resp.status_code, predicted, timing
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return TIMEOUT, None, timing
        except (
            httpx.HTTPError,
            OSError,
            EOFError,
            asyncio.LimitOverrunError,
            ValueError,
            KeyError,
            TypeError,
        ):
            # Connection failures and 200s whose body is not a TEI answer.
            return ERROR, None, timing
