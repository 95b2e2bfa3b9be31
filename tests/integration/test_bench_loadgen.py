"""The open-loop sender against a tiny FastAPI server on a real loopback socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from shoal.bench.loadgen import run_load_sync
from shoal.bench.metrics_timeline import count_replicas, parse_prometheus
from shoal.bench.protocol import label_index, request_for, top_label
from shoal.bench.rawhttp import RawHTTPClient
from shoal.bench.report import summarize
from shoal.bench.workload import Request as BenchRequest
from shoal.bench.workload import Workload

NAMES = ["negative", "positive"]
CLIENTS = ["httpx", "raw"]
METRICS = """# HELP shoal_active_students Students in use.
# TYPE shoal_active_students gauge
shoal_active_students 3
# TYPE shoal_queue_depth gauge
shoal_queue_depth{device="cpu0"} 2
shoal_queue_depth{device="cpu1"} 5
shoal_padded_tokens_total 120.0
shoal_real_tokens_total 880.0
shoal_cost_scale 1.25
"""


def _make_app(*, names: bool, metrics: bool, release: threading.Event) -> tuple[FastAPI, list]:
    """A server whose behaviour each request text dictates: ``say=<label>`` is the answer,
    ``reject`` gives a 429, ``hang`` waits for ``release``, ``garbage`` returns a bad body."""
    app = FastAPI()
    seen: list[tuple[Any, dict[str, str]]] = []

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        body = await request.json()
        seen.append((body, dict(request.headers)))
        inputs = body["inputs"]
        text = inputs if isinstance(inputs, str) else inputs[0]
        if "reject" in text:
            return JSONResponse({"error": "overloaded"}, status_code=429)
        if "hang" in text:
            await anyio.to_thread.run_sync(release.wait)
        if "garbage" in text:
            return JSONResponse({"nope": 1})
        said = int(text.split("say=")[1].split()[0])
        label = NAMES[said] if names else str(said)
        other = NAMES[1 - said] if names else str(1 - said)
        # The lower score first: the client must pick the top score, not the first item.
        answer = [{"label": other, "score": 0.1}, {"label": label, "score": 0.9}]
        headers = {"x-queue-time": "1.5", "x-inference-time": "4.25"}
        if names:
            headers["x-students-used"] = str(1 + said)
        return JSONResponse(answer, headers=headers)

    if metrics:

        @app.get("/metrics")
        async def prom() -> PlainTextResponse:
            return PlainTextResponse(METRICS)

    return app, seen


@contextmanager
def _serve(app: FastAPI, release: threading.Event, **config: Any) -> Iterator[str]:
    # Bind first so the port is known before the server thread runs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
            **config,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    # Wait until the server accepts, so slow start-up on a busy machine never counts against
    # the short client timeouts below (a bounded readiness wait, not a timing assumption).
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _workload(texts: list[str], golds: list[int], pairs: bool = False) -> Workload:
    reqs = [
        BenchRequest(offset_s=0.002 * i, text=t, text_pair=f"pair {i}" if pairs else None, label=g)
        for i, (t, g) in enumerate(zip(texts, golds, strict=True))
    ]
    return Workload(requests=reqs, label_names=NAMES, duration_s=0.002 * len(reqs))


@pytest.mark.parametrize("client", CLIENTS)
def test_every_request_recorded_with_status_headers_and_accuracy(client: str) -> None:
    release = threading.Event()
    app, seen = _make_app(names=True, metrics=True, release=release)
    texts, golds, expect = [], [], []
    for i in range(40):
        gold, said = i % 2, (i % 2 if i % 3 else 1 - i % 2)
        texts.append(f"t{i} say={said}" + (" reject" if i % 5 == 0 else ""))
        golds.append(gold)
        expect.append(None if i % 5 == 0 else said)
    with _serve(app, release) as url:
        result = run_load_sync(
            url,
            _workload(texts, golds),
            timeout_s=5.0,
            poll_s=0.05,
            headers={"x-api-key": "k"},
            extra={"truncate": True},
            client=client,
        )
    recs = result.records
    assert [r.index for r in recs] == list(range(40)) and len(seen) == 40
    assert [r.status for r in recs] == [429 if i % 5 == 0 else 200 for i in range(40)]
    assert [r.predicted for r in recs] == expect
    ok = [r for r in recs if r.status == 200]
    assert all(r.queue_ms == 1.5 and r.inference_ms == 4.25 for r in ok)
    assert all(r.students_used == 1 + r.predicted for r in ok)
    assert all(r.end_s >= r.start_s and r.latency_s == r.end_s - r.offset_s for r in recs)
    # Requests overlap, so the server may see them in any order.
    assert sorted(b["inputs"] for b, _ in seen) == sorted(texts)
    assert all(b["truncate"] is True and h["x-api-key"] == "k" for b, h in seen)

    right = sum(p == g for p, g in zip(expect, golds, strict=True) if p is not None)
    s = summarize(recs, latency_target_s=5.0, timeline=result.timeline)
    assert s["accuracy"] == pytest.approx(right / len(ok))
    assert (s["answered"], s["rejected"], s["timed_out"], s["errors"]) == (32, 8, 0, 0)
    # A scrape before the first send and one after the last answer, whatever happens between.
    assert result.metrics_available and len(result.timeline) >= 2
    first = result.timeline[0]
    assert (first.active_students, first.queue_depth, first.cost_scale) == (3, 7, 1.25)
    assert s["max_cost_scale"] == 1.25
    assert s["padding_ratio"] is None  # the fake's counters never move during the run


@pytest.mark.parametrize("client", CLIENTS)
def test_pairs_numeric_labels_timeouts_errors_and_no_metrics(client: str) -> None:
    release = threading.Event()
    app, seen = _make_app(names=False, metrics=False, release=release)
    texts = ["a say=1", "b hang say=1", "c say=0", "d garbage", "e say=1"]
    with _serve(app, release) as url:
        result = run_load_sync(
            url + "/predict",
            _workload(texts, [1, 1, 1, 0, 0], pairs=True),
            timeout_s=1.0,
            poll_s=0.05,
            labels=["0", "1"],
            client=client,
        )
    assert [r.status for r in result.records] == [200, "timeout", 200, "error", 200]
    assert [r.predicted for r in result.records] == [1, None, 0, None, 1]
    assert all(
        r.students_used is None and r.queue_ms == 1.5 for r in result.records if r.status == 200
    )
    assert not result.metrics_available and result.timeline == []
    assert ["a say=1", "pair 0"] in [b["inputs"] for b, _ in seen]
    s = summarize(result.records, latency_target_s=1.0)
    assert (s["answered"], s["timed_out"], s["errors"]) == (3, 1, 1)
    assert s["accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("client", CLIENTS)
def test_run_stops_at_the_drain_deadline(client: str) -> None:
    release = threading.Event()
    app, _ = _make_app(names=True, metrics=False, release=release)
    with _serve(app, release) as url:
        # The per-request timeout is far away; the run's own bound must end it.
        result = run_load_sync(
            url,
            _workload(["x hang say=1", "y say=0"], [1, 0]),
            timeout_s=60.0,
            drain_s=1.0,
            client=client,
        )
    assert [r.status for r in result.records] == ["timeout", 200]
    assert result.duration_s < 60


@pytest.mark.parametrize(
    ("label", "expected"),
    [("positive", 1), ("1", 1), ("LABEL_0", 0), ("7", None), ("maybe", None)],
)
def test_label_index(label: str, expected: int | None) -> None:
    assert label_index(label, NAMES) == expected


def test_top_label_and_prometheus_parsing() -> None:
    assert top_label([[{"label": "a", "score": 0.2}, {"label": "b", "score": 0.8}]]) == "b"
    with pytest.raises(ValueError):
        top_label({"error": "x"})
    assert parse_prometheus(METRICS) == {
        "shoal_active_students": 3.0,
        "shoal_queue_depth": 7.0,
        "shoal_padded_tokens_total": 120.0,
        "shoal_real_tokens_total": 880.0,
        "shoal_cost_scale": 1.25,
    }


def test_raw_client_reuses_connections_reads_chunked_bodies_and_refuses_https() -> None:
    import asyncio

    from fastapi.responses import StreamingResponse

    app = FastAPI()
    peers: list[Any] = []

    @app.post("/echo")
    async def echo(request: Request) -> Any:
        peers.append(request.client.port if request.client else None)
        body = await request.json()
        if body.get("chunked"):
            parts = [b'{"n": ', str(body["n"]).encode(), b"}"]
            return StreamingResponse(iter(parts), media_type="application/json")
        return JSONResponse({"n": body["n"]}, headers={"x-extra": "yes"})

    async def talk(url: str) -> list[Any]:
        raw = RawHTTPClient(url, {"x-api-key": "k"})
        try:
            out = []
            for i in range(4):  # one after the other: one connection carries them all
                resp = await raw.post("/echo", json={"n": i, "chunked": i % 2 == 1})
                out.append((resp.status_code, resp.json(), resp.headers.get("x-extra")))
            return out
        finally:
            await raw.aclose()

    with _serve(app, threading.Event()) as url:
        answers = asyncio.run(talk(url))
    assert [a[0] for a in answers] == [200] * 4
    assert [a[1] for a in answers] == [{"n": i} for i in range(4)]
    assert [a[2] for a in answers] == ["yes", None, "yes", None]
    assert len(set(peers)) == 1  # keep-alive: the same client port every time
    with pytest.raises(ValueError, match="https"):
        RawHTTPClient("https://127.0.0.1:8443")


def test_raw_client_retries_a_connection_the_server_closed_while_idle() -> None:
    import asyncio

    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Any:
        return JSONResponse(await request.json())

    async def talk(url: str) -> list[Any]:
        raw = RawHTTPClient(url)
        try:
            first = await raw.post("/echo", json={"n": 1})
            await asyncio.sleep(0.6)  # the server drops the idle connection meanwhile
            second = await raw.post("/echo", json={"n": 2})
            return [first.json(), second.json()]
        finally:
            await raw.aclose()

    # uvicorn closes a kept-alive connection after timeout_keep_alive seconds of idleness.
    with _serve(app, threading.Event(), timeout_keep_alive=0.2) as url:
        assert asyncio.run(talk(url)) == [{"n": 1}, {"n": 2}]


def _infinity_app(seen: list) -> FastAPI:
    """Infinity's /classify shape: ``{"input": [text]}`` -> ``{"data": [[{label, score}]]}``."""
    app = FastAPI()

    @app.post("/classify")
    async def classify(request: Request) -> Any:
        body = await request.json()
        seen.append(body)
        (text,) = body["input"]
        said = int(text.split("say=")[1])
        scores = [{"label": n, "score": 0.9 if i == said else 0.1} for i, n in enumerate(NAMES)]
        return {"object": "classify", "data": [scores], "model": "m"}

    return app


@pytest.mark.parametrize("client", CLIENTS)
def test_infinity_api_sends_classify_bodies_and_reads_their_labels(client: str) -> None:
    seen: list = []
    texts = [f"t{i} say={i % 2}" for i in range(12)]
    with _serve(_infinity_app(seen), threading.Event()) as url:
        result = run_load_sync(
            url, _workload(texts, [0] * 12), timeout_s=5.0, client=client, api="infinity"
        )
    assert [r.status for r in result.records] == [200] * 12
    assert [r.predicted for r in result.records] == [i % 2 for i in range(12)]
    assert sorted(b["input"][0] for b in seen) == sorted(texts)
    assert not result.metrics_available  # Infinity has no Shoal metrics: no timeline


def test_unknown_api_and_pairs_for_infinity_are_refused() -> None:
    with pytest.raises(ValueError, match="api="):
        run_load_sync("http://127.0.0.1:9", _workload(["a"], [0]), api="grpc")
    with pytest.raises(ValueError, match="single texts"):
        request_for("infinity", BenchRequest(offset_s=0, text="a", text_pair="b", label=0))


def test_replicas_counted_from_merged_metrics() -> None:
    merged = (
        'shoal_active_students{node="n1",replica="a"} 3.0\n'
        'shoal_active_students{node="n2",replica="b"} 1.0\n'
        'shoal_queue_depth{node="n1",replica="a"} 4.0\n'
    )
    assert count_replicas(merged) == 2
    assert count_replicas(METRICS) is None
