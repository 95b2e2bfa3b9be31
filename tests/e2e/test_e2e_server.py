"""The real server process on loopback: every route, error and header; the Python client; the
log line per request; bounded admission under a burst."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shoal.serve.client import ShoalClient, ShoalHTTPError

API_KEY = "e2e-k3y"  # as the server fixture is started with (conftest.API_KEY)
AUTH = {"authorization": f"Bearer {API_KEY}"}
LABELS = ["negative", "positive"]


def http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=AUTH, timeout=30, trust_env=False)


def test_every_route_answers(server):
    with http(server) as c:
        health = c.get("/health")
        info = c.get("/info")
        single = c.post("/predict", json={"inputs": "a good movie"})
        pair = c.post("/predict", json={"inputs": ["good", "bad plot"]})
        batch = c.post("/predict", json={"inputs": [["good"], ["bad", "plot"]], "raw_scores": True})
        classify = c.post("/v1/classify", json={"texts": ["good", "awful"], "min_k": 2})
        metrics = c.get("/metrics")
        docs = c.get("/docs")
        schema = c.get("/openapi.json")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert info.status_code == 200
    body = info.json()
    assert body["n_students"] == 3 and body["labels"] == LABELS
    assert body["config"]["api_key"] == "***" and body["max_client_batch_size"] == 8
    assert [r["k"] for r in body["prefix_accuracy"]] == [1, 2, 3]
    for resp in (single, pair):
        assert resp.status_code == 200
        assert [x["label"] for x in resp.json()] in (LABELS, LABELS[::-1])
    assert batch.status_code == 200 and len(batch.json()) == 2
    assert classify.status_code == 200
    assert all(r["students_used"] >= 2 for r in classify.json()["results"])
    for resp in (single, pair, batch, classify):
        for h in ("x-total-time", "x-queue-time", "x-inference-time"):
            assert float(resp.headers[h]) >= 0
        assert 1 <= int(resp.headers["x-students-used"]) <= 3
    assert int(classify.headers["x-students-used"]) >= 2
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "shoal_request_latency_seconds",
        "shoal_queue_time_seconds",
        "shoal_inference_time_seconds",
        "shoal_batch_size",
        "shoal_queue_depth",
        "shoal_active_students",
        "shoal_cost_scale",
        "shoal_requests_total",
        "shoal_rejected_total",
        "shoal_padded_tokens_total",
        "shoal_padding_tokens_total",
        "shoal_real_tokens_total",
    ):
        assert f"# TYPE {name}" in metrics.text or f"# HELP {name}" in metrics.text, name
    assert docs.status_code == 200
    assert {"/predict", "/v1/classify", "/health", "/info", "/metrics"} <= set(
        schema.json()["paths"]
    )


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error_type"),
    [
        ("post", "/predict", {"content": b'{"inputs": "go'}, 422, "validation"),
        ("post", "/predict", {"json": {"inputs": ""}}, 422, "validation"),
        ("post", "/predict", {"json": {"inputs": "ok", "extra": 1}}, 422, "validation"),
        ("post", "/predict", {"json": {"inputs": [["a"]] * 9}}, 413, "validation"),
        (
            "post",
            "/predict",
            {"json": {"inputs": "good " * 50, "truncate": False}},
            413,
            "validation",
        ),
        ("post", "/predict", {"json": {"inputs": "good", "min_k": 7}}, 422, "validation"),
        (
            "post",
            "/predict",
            {"content": b'{"inputs": "\xff"}', "headers": {"content-type": "application/json"}},
            400,
            "validation",
        ),
        ("post", "/v1/classify", {"json": {"texts": ["a"], "text_pairs": []}}, 422, "validation"),
        ("get", "/predict", {}, 405, "validation"),
        ("get", "/nowhere", {}, 404, "not_found"),
    ],
)
def test_errors_are_clear_4xx(server, method, path, kwargs, status, error_type):
    with http(server) as c:
        resp = c.request(method.upper(), path, **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_type"] == error_type and len(body["error"]) > 20
    assert float(resp.headers["x-total-time"]) >= 0


def test_api_key_is_required(server):
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        assert c.get("/health").status_code == 200
        for resp in (
            c.post("/predict", json={"inputs": "good"}),
            c.get("/info"),
            c.get("/metrics"),
            c.post("/predict", json={"inputs": "good"}, headers={"authorization": "Bearer wrong"}),
        ):
            assert resp.status_code == 401 and resp.json()["error_type"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"


def test_python_client(server):
    with ShoalClient(server.url, api_key=API_KEY) as client:
        assert client.health()
        top = client.predict("a good movie")
        assert top[0]["score"] >= top[1]["score"]
        assert len(client.predict([["good"], ["bad", "plot"]])) == 2
        assert len(client.predict(["good", "bad plot"])) == 2  # a pair
        out = client.classify("good", min_k=3)
        assert out["results"][0]["students_used"] == 3
        assert client.info()["n_students"] == 3
        assert "shoal_requests_total" in client.metrics()
        with pytest.raises(ShoalHTTPError) as err:
            client.predict("good", min_k=9)
        assert err.value.status == 422 and "min_k=9" in err.value.message
    with ShoalClient(server.url) as anonymous, pytest.raises(ShoalHTTPError) as err:
        anonymous.info()
    assert err.value.status == 401
    assert not ShoalClient("http://127.0.0.1:9").health()


def test_one_log_line_per_request(server):
    with http(server) as c:
        c.post("/predict", json={"inputs": "log me please"})
    lines = [
        x
        for x in server.output().splitlines()
        if "shoal.serve.access" in x and "POST /predict 200" in x
    ]
    assert lines and "queue_ms=" in lines[-1] and "k=" in lines[-1]


def test_burst_beyond_capacity_gets_429_never_a_hang(start_server):
    srv = start_server("--queue-capacity", "4", "--max-batch-size", "2")

    async def burst() -> list[int | str]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=srv.url, timeout=30, limits=limits, trust_env=False
        ) as c:

            async def one(i: int) -> int | str:
                try:
                    r = await c.post("/predict", json={"inputs": f"good movie {i}"})
                except httpx.HTTPError as e:
                    return type(e).__name__
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(150)))

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 4 and statuses.count(429) >= 1
    with httpx.Client(base_url=srv.url, trust_env=False) as c:
        metrics = c.get("/metrics").text
        assert c.get("/health").status_code == 200
    assert f'shoal_requests_total{{status="429"}} {statuses.count(429)}.0' in metrics
    assert srv.terminate() == 0


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-4), ("int8", 1e-2)])
def test_onnxruntime_backend_serves_the_same_answers(server, start_server, dtype, tol):
    """`--backend onnxruntime` runs the students on ONNX Runtime: same scores, same routes;
    `--dtype int8` quantizes them, so scores move a little."""
    ort = start_server("--backend", "onnxruntime", "--dtype", dtype)
    texts = ["a good movie", "bad plot , awful", "good"]
    with http(server) as c, httpx.Client(base_url=ort.url, timeout=30, trust_env=False) as o:
        want = c.post("/v1/classify", json={"texts": texts, "min_k": 3}).json()["results"]
        got = o.post("/v1/classify", json={"texts": texts, "min_k": 3}).json()["results"]
        info = o.get("/info").json()
    assert (info["config"]["backend"], info["config"]["dtype"]) == ("onnxruntime", dtype)
    for a, b in zip(want, got, strict=True):
        assert a["label"] == b["label"] and a["students_used"] == b["students_used"] == 3
        assert a["scores"] == pytest.approx(b["scores"], abs=tol)
