"""The HTTP API's guards and compatibility routes in process (httpx over ASGI, fake runtime):
the key before the body, body limits (413), bodies of more values than a request can hold
refused before they are parsed, the largest valid batch within the default body limit,
abandoned uploads (499), readiness, Hugging Face and SageMaker routes and parameters,
invisible text, and 500s that name a request id only."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from test_api import INFO, assert_error, serving
from test_engine_fakes import FakeRuntime, cohort_dir, make_engine

from shoal.serve.api import ApiLimits, create_app
from shoal.serve.failures import FAILING_AFTER
from shoal.serve.server import ServeConfig, build_app

__all__ = ["cohort_dir"]
pytestmark = pytest.mark.anyio
KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def make_app(cohort, *, api_key=None, max_body_bytes=4096, rt=None):
    engine, encoder, rt = make_engine(cohort, rt)
    limits = ApiLimits(max_client_batch_size=4, api_key=api_key, max_body_bytes=max_body_bytes)
    app = create_app(engine, encoder, INFO, limits, on_close=rt.close)
    return app, engine, rt


# ------------------------------------------------------------------------------ limits


async def test_the_key_is_checked_before_the_body_is_read(cohort_dir):
    app, _, rt = make_app(cohort_dir, api_key=KEY)
    json_type = {"content-type": "application/json"}
    async with serving(app) as client:
        malformed = await client.post("/predict", content=b'{"inputs": "go', headers=json_type)
        too_big = await client.post("/predict", content=b"x" * 100_000, headers=json_type)
        keyed = await client.post(
            "/predict", content=b'{"inputs": "go', headers={**json_type, **AUTH}
        )
    for resp in (malformed, too_big):
        assert_error(resp, 401, "unauthorized", "Bearer")
        assert resp.headers["connection"] == "close"  # the unread body is never read
    assert_error(keyed, 422, "validation", "not valid JSON")
    assert rt.calls == []


async def test_oversized_bodies_get_413_declared_or_streamed(cohort_dir):
    app, _, rt = make_app(cohort_dir, max_body_bytes=1000)
    body = json.dumps({"inputs": "good " * 300}).encode()

    async def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    async with serving(app) as client:
        declared = await client.post("/predict", content=body)
        streamed = await client.post("/predict", content=chunks())  # chunked: no length
        small = await client.post("/predict", json={"inputs": "good"})
    assert_error(declared, 413, "validation", f"{len(body)} bytes", "max_body_bytes=1000")
    assert_error(streamed, 413, "validation", "max_body_bytes=1000")
    assert small.status_code == 200 and len(rt.calls) == 1


async def test_an_abandoned_upload_counts_as_499(cohort_dir):
    app, _, rt = make_app(cohort_dir)
    sent: list[dict] = []
    messages = [
        {"type": "http.request", "body": b'{"inputs": ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "server": ("shoal", 80),
        "client": ("127.0.0.1", 1234),
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
    }
    async with serving(app) as client:
        await app(scope, receive, send)
        metrics = (await client.get("/metrics")).text
    assert sent[0]["status"] == 499
    assert 'shoal_requests_total{status="499"} 1.0' in metrics
    assert 'status="400"' not in metrics and rt.calls == []


async def test_a_full_batch_of_escaped_non_latin_text_fits_the_default_limit(cohort_dir):
    config = ServeConfig()
    n, chars = config.max_client_batch_size, config.max_input_chars
    cjk, emoji = "漢" * chars, "😀" * chars  # 6 and 12 bytes a character, escaped
    # as requests and json.dumps send them by default (ensure_ascii): the largest valid bodies
    predict = json.dumps({"inputs": [[emoji, emoji]] * n}).encode()
    classify = json.dumps({"texts": [cjk] * n, "text_pairs": [emoji] * n}).encode()
    assert len(predict) > 12 * 2 * n * chars
    app = build_app(cohort_dir, config, runner=FakeRuntime.load(cohort_dir))
    json_type = {"content-type": "application/json"}
    async with serving(app) as client:
        answers = [
            await client.post("/predict", content=predict, headers=json_type),
            await client.post("/v1/classify", content=classify, headers=json_type),
        ]
    for resp in answers:
        assert resp.status_code == 200, resp.text[:300]
    assert len(answers[0].json()) == n and len(answers[1].json()["results"]) == n


async def test_a_large_body_is_parsed_in_slices_and_refused_as_json_loads_would(
    cohort_dir, monkeypatch
):
    import starlette.requests

    spy = ParseSpy()
    monkeypatch.setattr(starlette.requests, "json", spy)
    app, _, rt = make_app(cohort_dir, max_body_bytes=8 << 20)
    long = "good " * 100 + "😀" * 1400  # 1,900 characters, 17 KB escaped (max_chars=2000)
    batch = json.dumps({"inputs": [[long], [long, long]] * 2}).encode()  # escaped, 86 KB
    json_type = {"content-type": "application/json"}
    async with serving(app) as client:
        ok = await client.post("/predict", content=batch, headers=json_type)
        too_long = await client.post(
            "/predict", content=json.dumps({"inputs": "a" * 70_000}), headers=json_type
        )
        broken = await client.post("/predict", content=batch[:-1], headers=json_type)
        text_plain = await client.post(
            "/predict", content=batch, headers={"content-type": "text/plain"}
        )
        small = await client.post("/predict", json={"inputs": "good"})
    assert ok.status_code == 200 and len(ok.json()) == 4
    assert spy.sizes == [len(b'{"inputs":"good"}')]  # FastAPI parsed the small body only
    assert sum(c.batch for c in rt.calls) == 5  # the long inputs (and the small one) ran
    assert_error(too_long, 413, "validation", "70000 bytes", "max_input_chars=2000")
    assert_error(broken, 422, "validation", "not valid JSON")
    assert_error(text_plain, 422, "validation", "Content-Type: application/json")
    assert small.status_code == 200


class ParseSpy:
    """Stands in for the ``json`` module of Starlette's request: records each body parsed."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def loads(self, body: bytes) -> object:
        self.sizes.append(len(body))
        return json.loads(body)


async def test_a_body_of_many_values_is_refused_before_it_is_parsed(cohort_dir, monkeypatch):
    import starlette.requests

    spy = ParseSpy()
    monkeypatch.setattr(starlette.requests, "json", spy)
    app, _, rt = make_app(cohort_dir, max_body_bytes=8 << 20)
    items = 370_000  # 2.5 MiB of ["a"]: about a second to parse and validate
    bodies = {
        "/predict": {"inputs": [["a"]] * items},
        "/invocations": {"inputs": [["a"]] * items},
        "/v1/classify": {"texts": ["a"] * items},
        "/": {"inputs": "a", "unknown": [[]] * items},
    }
    async with serving(app) as client:
        refused = {path: await client.post(path, json=body) for path, body in bodies.items()}
        over = await client.post("/predict", json={"inputs": [["good"]] * 5})
        ok = await client.post("/predict", json={"inputs": [["good"], ["good", "bad"]]})
    for resp in refused.values():
        assert_error(resp, 413, "validation", "max_client_batch_size=4", "--max-client-batch-size")
    assert all(size < 1000 for size in spy.sizes), spy.sizes  # only the small ones were parsed
    assert_error(over, 413, "validation", "5 inputs in one request, above max_client_batch_size=4")
    assert ok.status_code == 200 and len(rt.calls) == 1


async def test_docs_need_the_key_and_probes_do_not(cohort_dir):
    app, _, _ = make_app(cohort_dir, api_key=KEY)
    async with serving(app) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/v1/models"):
            assert_error(await client.get(path), 401, "unauthorized")
            assert (await client.get(path, headers=AUTH)).status_code == 200, path
        head = await client.head("/health")
        ping = await client.get("/ping")
        root = await client.get("/")  # TEI's health check
        root_head = await client.head("/")
        classify_root = await client.post("/", json={"inputs": "good"})
    assert head.status_code == 200 and head.content == b""
    assert ping.json()["status"] == "ok" and root.json()["status"] == "ok"
    assert root_head.status_code == 200
    assert_error(classify_root, 401, "unauthorized")  # POST / classifies: it needs the key


# ------------------------------------------------------------------------------ compatibility


async def test_inference_api_routes_and_parameters(cohort_dir):
    app, _, _ = make_app(cohort_dir)
    async with serving(app) as client:
        root = await client.post("/", json={"inputs": "a good movie"})
        sagemaker = await client.post("/invocations", json={"inputs": "a good movie"})
        tei = await client.post("/predict", json={"inputs": "a good movie"})
        top1 = await client.post("/", json={"inputs": "good", "parameters": {"top_k": 1}})
        sig = await client.post(
            "/predict", json={"inputs": "good", "parameters": {"function_to_apply": "sigmoid"}}
        )
        raw = await client.post(
            "/predict", json={"inputs": "good", "parameters": {"function_to_apply": "none"}}
        )
        logits = await client.post("/predict", json={"inputs": "good", "raw_scores": True})
        bad = await client.post(
            "/predict", json={"inputs": "good", "parameters": {"function_to_apply": "tanh"}}
        )
        unknown = await client.post("/predict", json={"inputs": "good", "parameters": {"x": 1}})
        clash = await client.post(
            "/predict",
            json={
                "inputs": "good",
                "raw_scores": True,
                "parameters": {"function_to_apply": "softmax"},
            },
        )
        health = await client.get("/")
    assert root.status_code == 200 and root.json() == sagemaker.json() == [tei.json()]
    assert len(top1.json()) == 1 and len(top1.json()[0]) == 1
    assert top1.json()[0][0]["label"] == tei.json()[0]["label"]
    by_label = {x["label"]: x["score"] for x in logits.json()}
    sigmoid = {x["label"]: x["score"] for x in sig.json()}
    for label, logit in by_label.items():
        assert sigmoid[label] == pytest.approx(1 / (1 + math.exp(-logit)))
    assert raw.json() == logits.json()
    assert_error(bad, 422, "validation", "function_to_apply")
    assert_error(unknown, 422, "validation", "parameters.x")
    assert_error(clash, 422, "validation", "raw_scores", "function_to_apply='softmax'")
    assert health.json()["status"] == "ok"  # GET / is TEI's health check


@pytest.mark.parametrize("text", ["\x00\x00", "\u200b \u200b", "\ufeff\u200d"])
async def test_invisible_text_counts_as_blank(cohort_dir, text):
    app, _, rt = make_app(cohort_dir)
    async with serving(app) as client:
        resp = await client.post("/predict", json={"inputs": text})
        pair = await client.post("/predict", json={"inputs": ["good", text]})
    assert_error(resp, 422, "validation", "empty")
    assert_error(pair, 422, "validation", "pair is empty")
    assert rt.calls == []


@pytest.mark.parametrize(
    "escaped", [r'"\ud800"', r'"a\udfffb"', r'["good", "\ud83d"]', r'[["\udc00 x"]]']
)
async def test_lone_surrogates_are_refused_and_leave_the_server_healthy(cohort_dir, escaped):
    app, _, rt = make_app(cohort_dir, max_body_bytes=1 << 20)
    json_type = {"content-type": "application/json"}
    body = b'{"inputs": %s}' % escaped.encode()
    emoji = json.dumps("😀" * 1900)[1:-1].encode()  # 22.8 KB escaped: four are parsed in slices
    long = b'{"texts": ["%s", "%s", "%s", "%s\\udc00"]}' % (emoji, emoji, emoji, emoji)
    async with serving(app) as client:
        answers = [await client.post("/predict", content=body, headers=json_type) for _ in range(4)]
        sliced = await client.post("/v1/classify", content=long, headers=json_type)
        tokens = await client.post("/tokenize", content=rb'{"inputs": "\ud800"}', headers=json_type)
        health = await client.get("/health")
        good = await client.post("/predict", json={"inputs": "good \U0001f600"})
    for resp in answers:
        assert_error(resp, 422, "validation", "lone UTF-16 surrogate", "\\uXXXX\\uXXXX")
    assert_error(sliced, 422, "validation", "input 3", "surrogate")
    assert_error(tokens, 422, "validation", "surrogate")
    assert health.status_code == 200, health.text  # a client's bad text is not a failure
    assert good.status_code == 200 and len(rt.calls) == 1  # a valid astral character is fine


# ------------------------------------------------------------------------------ failures


async def test_500_names_a_request_id_and_no_internals(cohort_dir, caplog):
    app, _, rt = make_app(cohort_dir)
    rt.fail = True
    async with serving(app) as client:
        resp = await client.post("/predict", json={"inputs": "good"})
    body = assert_error(resp, 500, "backend", "request id")
    rid = resp.headers["x-request-id"]
    assert rid in body["error"] and "injected" not in body["error"] and "/" not in body["error"]
    assert any(rid in r.getMessage() and "injected" in r.getMessage() for r in caplog.records)


async def test_health_fails_after_batches_fail_in_a_row(cohort_dir):
    app, engine, rt = make_app(cohort_dir)
    rt.fail = True
    async with serving(app) as client:
        for i in range(FAILING_AFTER):
            assert (await client.get("/health")).status_code == 200
            assert (await client.post("/predict", json={"inputs": f"t{i}"})).status_code == 500
        unhealthy = await client.get("/health")
        rt.fail = False
        assert (await client.post("/predict", json={"inputs": "good"})).status_code == 200
        healthy = await client.get("/health")
    assert_error(
        unhealthy,
        503,
        "unhealthy",
        f"last {FAILING_AFTER} batches or requests failed",
        "runtime failed",
    )
    assert healthy.status_code == 200 and engine.batch_failures == 0


async def test_worker_metrics_come_from_the_runtime_status(cohort_dir):
    from shoal.serve.runtime import WorkerStatus

    app, _, rt = make_app(cohort_dir)
    workers = [
        WorkerStatus(0, "cpu", (0,), (0, 1), 11, True, 2),
        WorkerStatus(1, "cpu", (1,), (2,), None, False, 3, start_failures=2),
    ]
    rt.status = lambda: workers  # the runtime's non-blocking status
    app, _, _ = make_app(cohort_dir, rt=rt)
    async with serving(app) as client:
        metrics = (await client.get("/metrics")).text
        health = await client.get("/health")
    assert "shoal_workers_alive 1.0" in metrics
    assert 'shoal_worker_restarts_total{worker="0"} 2.0' in metrics
    assert 'shoal_worker_restarts_total{worker="1"} 3.0' in metrics
    assert_error(health, 503, "unhealthy", "1 of 2 worker processes are down")
    assert "11" not in health.json()["error"]  # no pids


async def test_latency_buckets_reach_past_the_deadline(cohort_dir):
    app, _, _ = make_app(cohort_dir)
    async with serving(app) as client:
        await client.post("/predict", json={"inputs": "good"})
        metrics = (await client.get("/metrics")).text
    assert 'shoal_request_latency_seconds_bucket{le="60.0"}' in metrics
    await asyncio.sleep(0)


# ------------------------------------------------------------------------------ cohort folder


def test_a_tokenizer_auto_map_runs_no_code(cohort_dir, tmp_path):
    import shutil

    from shoal.models.cohort_folder import load_tokenizer

    folder = tmp_path / "cohort"
    shutil.copytree(cohort_dir, folder)
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertTokenizerFast\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n"
    )
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    config_path.write_text(json.dumps(config))
    try:
        tokenizer = load_tokenizer(folder)
    except Exception as e:  # refusing the folder is as good as ignoring its code
        assert "trust_remote_code" in str(e) or "custom code" in str(e), e
    else:
        assert type(tokenizer).__name__ != "EvilTokenizer"
    assert not marker.exists()


def test_a_corrupt_meta_file_is_named(cohort_dir, tmp_path):
    import shutil

    from shoal.errors import ModelError
    from shoal.models.cohort_folder import read_cohort

    folder = tmp_path / "cohort"
    shutil.copytree(cohort_dir, folder)
    (folder / "shoal_meta.json").write_text('{"prefix_accuracy": [')
    with pytest.raises(ModelError, match="shoal_meta.json is not valid JSON"):
        read_cohort(folder)
