"""Open-loop HTTP load generator for any server that speaks the TEI-style ``/predict`` API.

Open loop: each request leaves at its scheduled offset whether or not earlier ones were
answered, so a slow server faces the offered load instead of quietly throttling the client.
Latency is measured from the *scheduled* send time, so any lag on the client side is charged
to the request rather than hidden (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json as _json
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from shoal.bench.workload import Request, Workload

# Gauges and counters read from GET /metrics; other servers may lack some or all of them.
ACTIVE_STUDENTS = "shoal_active_students"
QUEUE_DEPTH = "shoal_queue_depth"
PADDED_TOKENS = "shoal_padded_tokens_total"
REAL_TOKENS = "shoal_real_tokens_total"
COST_SCALE = "shoal_cost_scale"
METRIC_NAMES = (ACTIVE_STUDENTS, QUEUE_DEPTH, PADDED_TOKENS, REAL_TOKENS, COST_SCALE)

Client = Literal["httpx", "raw"]
CLIENTS: tuple[Client, ...] = ("httpx", "raw")
"""Load generator transports: httpx's pooled client, or :class:`RawHTTPClient`."""

TIMEOUT = "timeout"
ERROR = "error"
_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")


@dataclass(frozen=True)
class Record:
    """What happened to one request. Times are seconds since the run started.

    ``latency_s = end_s - offset_s`` (from the scheduled send, see the module docstring);
    ``start_s - offset_s`` is the client's own lag. ``status`` is the HTTP code, or
    ``"timeout"`` / ``"error"`` when no usable response came back. ``predicted`` is None
    unless the status is 200 and the label could be mapped to a class index.
    """

    index: int
    offset_s: float
    start_s: float
    end_s: float
    latency_s: float
    status: int | str
    predicted: int | None
    gold: int
    queue_ms: float | None = None
    inference_ms: float | None = None
    students_used: int | None = None

    @property
    def answered(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class MetricSample:
    """One scrape of ``/metrics`` at ``t_s`` seconds since the run started (None = absent)."""

    t_s: float
    active_students: float | None
    queue_depth: float | None
    padded_tokens: float | None
    real_tokens: float | None
    cost_scale: float | None = None
    """Measured over profiled batch time (the pruning policy's calibration)."""
    replicas: int | None = None
    """Replicas in the scrape (a Ray Serve application's merged metrics); None: one server.
    With replicas, ``active_students`` is their mean and ``queue_depth`` their sum."""


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced: one record per request (in workload order) and the
    metrics timeline (empty when the server has no ``/metrics``)."""

    url: str
    started_at: str
    duration_s: float
    offered_duration_s: float
    records: list[Record]
    timeline: list[MetricSample]
    metrics_available: bool


def parse_prometheus(text: str, names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Values of the named metrics in Prometheus text format, summed over label sets
    (per-replica gauges and counters add up to the server's total)."""
    wanted = set(names)
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _PROM_LINE.match(line.strip())
        if m is None or m.group(1) not in wanted:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


def count_replicas(text: str) -> int | None:
    """Distinct ``replica`` labels on the active-students gauge (merged metrics of a Ray
    Serve application); None where the scrape has none (one server)."""
    found = set(re.findall(rf'^{ACTIVE_STUDENTS}{{[^}}]*replica="([^"]+)"', text, re.M))
    return len(found) or None


def label_index(label: str, labels: Sequence[str]) -> int | None:
    """Class index of a returned label: a label name, ``"3"`` or HF-style ``"LABEL_3"``."""
    if label in labels:
        return list(labels).index(label)
    m = re.fullmatch(r"(?:LABEL_)?(\d+)", label.strip())
    if m is not None and int(m.group(1)) < max(len(labels), 1):
        return int(m.group(1))
    return None


def request_body(req: Request, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """TEI ``/predict`` body: a single text, or a two-item list for a sentence pair."""
    inputs: str | list[str] = req.text if req.text_pair is None else [req.text, req.text_pair]
    return {**(extra or {}), "inputs": inputs}


APIS = ("tei", "infinity")
"""Request shapes the generator speaks: TEI's ``POST /predict`` (Shoal and the teacher
baselines) or Infinity's ``POST /classify``."""


def request_for(api: str, req: Request, extra: Mapping[str, Any] | None = None) -> tuple[str, Any]:
    """The path and JSON body that ask ``api`` to classify one request."""
    if api == "infinity":
        if req.text_pair is not None:
            raise ValueError("Infinity's /classify takes single texts, not pairs")
        return "/classify", {**(extra or {}), "input": [req.text]}
    return "/predict", request_body(req, extra)


def answer_label(api: str, payload: Any) -> str:
    """The top label of one answer: TEI's list of ``{label, score}``, or Infinity's
    ``{"data": [[{label, score}, ...]]}``."""
    if api == "infinity":
        return top_label(payload["data"][0])
    return top_label(payload)


def top_label(payload: Any) -> str:
    """The highest-scoring label of a ``/predict`` answer (``[{"label", "score"}, ...]``,
    also accepted wrapped in one more list as TEI does for batched inputs)."""
    if isinstance(payload, list) and payload and isinstance(payload[0], list):
        payload = payload[0]
    if not isinstance(payload, list) or not payload:
        raise ValueError(f"expected a non-empty list of {{label, score}}, got {payload!r:.200}")
    best = max(payload, key=lambda p: float(p["score"]))
    return str(best["label"])


@dataclass(frozen=True)
class RawResponse:
    """What :class:`RawHTTPClient` read: status, lower-cased headers and the body."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return _json.loads(self.content)


class RawHTTPClient:
    """A minimal HTTP/1.1 keep-alive client for ``POST`` with a JSON body, built on asyncio
    streams, for load generation on the same machine as the server.

    Its cost per request does not grow with the number of requests in flight: an idle
    connection is popped from a stack, or a new one is opened. (httpx's pool does more work
    per request as its connection count grows, and on a shared 2-core host that made the
    load generator, not the server, the bottleneck of the overload runs.) A connection that
    fails, times out or is cancelled mid-request is closed, never reused; a kept-alive one the
    server closed while it was idle is replaced and the request sent on a new one. Responses
    must carry a body delimited by Content-Length, chunking or the connection's close, as
    every JSON answer does. ``http://`` only.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(
                f"the raw client speaks plain http:// to a host, not {base_url!r}; "
                f"use client='httpx' for https"
            )
        self.host, self.port = url.hostname, url.port or 80
        self.prefix = url.path.rstrip("/")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {self.host}:{self.port}\r\n{extra}"
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self._open: set[asyncio.StreamWriter] = set()

    async def post(self, path: str, *, json: Any) -> RawResponse:
        """POST ``json`` (httpx's keyword) to ``path``; the whole response, body read."""
        body = _json.dumps(json).encode()
        request = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        while self._idle:  # reuse a kept-alive connection, unless the server has closed it
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():
                self._drop(writer)
                continue
            try:
                return await self._exchange(reader, writer, request, reused=True)
            except _StaleConnection:
                continue  # closed by the server while idle, before it read this request
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._open.add(writer)
        return await self._exchange(reader, writer, request, reused=False)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        *,
        reused: bool,
    ) -> RawResponse:
        reusable = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                response, reusable = await _read_response(reader)
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
                nothing_read = not isinstance(e, asyncio.IncompleteReadError) or not e.partial
                if reused and nothing_read:
                    raise _StaleConnection from e
                raise
            return response
        finally:
            if reusable:
                self._idle.append((reader, writer))
            else:
                self._drop(writer)

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in self._open:
            writer.close()
        self._open.clear()
        self._idle.clear()


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed; the request was not read."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[RawResponse, bool]:
    """One HTTP/1.1 response; also whether the connection can carry another request."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {status_line!r:.80}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        content = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailer fields, then the empty line that ends the message
        content = b"".join(chunks)
    else:  # delimited by the server closing the connection
        content, keep = await reader.read(), False
    return RawResponse(int(parts[1]), headers, content), keep


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
    labels = list(labels if labels is not None else workload.label_names)
    drain = timeout_s + 1.0 if drain_s is None else drain_s
    reqs = workload.requests
    records: list[Record | None] = [None] * len(reqs)
    starts = [r.offset_s for r in reqs]  # actual send times, kept for cancelled requests
    # trust_env=False: a benchmark must reach the server directly, never through a proxy
    # configured in the environment.
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    sender: httpx.AsyncClient | RawHTTPClient
    if client == "raw":
        sender = RawHTTPClient(base, headers)
    elif client == "httpx":
        sender = httpx.AsyncClient(
            base_url=base,
            headers=dict(headers or {}),
            limits=limits,
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
        )
    else:
        raise ValueError(f"client={client!r} must be one of {CLIENTS}")
    # The poller has its own connection so a saturated request pool cannot silence the
    # timeline exactly when it matters (during a burst).
    poller = httpx.AsyncClient(
        base_url=base,
        headers=dict(headers or {}),
        trust_env=False,
        timeout=httpx.Timeout(max(poll_s, 1.0)),
        limits=httpx.Limits(max_connections=1),
    )
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - t0

    async def send(i: int, req: Request) -> None:
        start = starts[i] = now()
        status: int | str = ERROR
        predicted = queue_ms = inference_ms = students = None
        try:
            path, body = request_for(api, req, extra)
            resp = await asyncio.wait_for(sender.post(path, json=body), timeout_s)
            status = resp.status_code
            queue_ms = _float_header(resp.headers, "x-queue-time")
            inference_ms = _float_header(resp.headers, "x-inference-time")
            students = _int_header(resp.headers, "x-students-used")
            if status == 200:
                predicted = label_index(answer_label(api, resp.json()), labels)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            status = TIMEOUT
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
            status = ERROR
        end = now()
        records[i] = Record(
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

    tasks: list[asyncio.Task[None]] = []

    async def dispatch() -> None:
        for i, req in enumerate(reqs):
            delay = req.offset_s - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, req)))

    timeline: list[MetricSample] = []
    stop = asyncio.Event()
    metrics_ok = True

    async def poll() -> None:
        nonlocal metrics_ok
        while metrics_ok:
            metrics_ok = await _scrape(poller, now, timeline)
            if stop.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):  # the normal case: time to poll
                await asyncio.wait_for(stop.wait(), poll_s)

    last = reqs[-1].offset_s if reqs else 0.0
    deadline = last + drain
    try:
        # A first scrape before any traffic gives the counters' baseline for this run; the
        # clock restarts after it so a slow scrape never makes the first sends late.
        metrics_ok = await _scrape(poller, lambda: 0.0, timeline)
        t0 = time.perf_counter()
        poll_task = asyncio.create_task(poll())
        await dispatch()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - now()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        stop.set()
        await poll_task
        if metrics_ok:  # a closing scrape so the counters cover the whole run
            await _scrape(poller, now, timeline)
    finally:
        await sender.aclose()
        await poller.aclose()
    end = now()
    out = [
        r
        if r is not None
        else Record(
            index=i,
            offset_s=q.offset_s,
            start_s=starts[i],
            end_s=end,
            latency_s=end - q.offset_s,
            status=TIMEOUT,
            predicted=None,
            gold=q.label,
        )
        for i, (r, q) in enumerate(zip(records, reqs, strict=True))
    ]
    return RunResult(
        url=base,
        started_at=started_at,
        duration_s=end,
        offered_duration_s=workload.duration_s,
        records=out,
        timeline=timeline,
        metrics_available=bool(timeline),
    )


def run_load_sync(url: str, workload: Workload, **kwargs: Any) -> RunResult:
    """``run_load`` in a fresh event loop, for callers that are not async (the CLI)."""
    return asyncio.run(run_load(url, workload, **kwargs))


async def _scrape(
    client: httpx.AsyncClient, now: Callable[[], float], timeline: list[MetricSample]
) -> bool:
    """Append one sample; return False when the server has no /metrics (stop polling)."""
    try:
        resp = await client.get("/metrics")
    except httpx.HTTPError:
        return True  # a missed scrape under load is a gap in the timeline, not the end of it
    if resp.status_code in (404, 405):
        return False
    if resp.status_code != 200:
        return True
    values = parse_prometheus(resp.text)
    if not values:
        return True
    replicas = count_replicas(resp.text)
    active = values.get(ACTIVE_STUDENTS)
    if active is not None and replicas:
        active /= replicas
    timeline.append(
        MetricSample(
            t_s=now(),
            active_students=active,
            replicas=replicas,
            queue_depth=values.get(QUEUE_DEPTH),
            padded_tokens=values.get(PADDED_TOKENS),
            real_tokens=values.get(REAL_TOKENS),
            cost_scale=values.get(COST_SCALE),
        )
    )
    return True


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = _float_header(headers, name)
    return None if value is None else int(value)
