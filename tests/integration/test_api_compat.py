"""The shapes other stacks' clients speak, in process (httpx over ASGI, fake runtime): vLLM's
classify body on /classify and /v1/classify beside Shoal's, /v1/models, TEI's /tokenize and
/info fields (against the required fields of TEI's published OpenAPI document), and GET / as
TEI's health check."""

from __future__ import annotations

import pytest
from test_api import INFO, LABELS, assert_error, serving
from test_engine_fakes import cohort_dir, make_engine

from shoal.serve.api import ApiLimits, create_app

__all__ = ["cohort_dir"]
pytestmark = pytest.mark.anyio

TEI_INFO_REQUIRED = {
    "model_id", "model_dtype", "model_type", "max_concurrent_requests", "max_input_length",
    "max_batch_tokens", "max_client_batch_size", "auto_truncate", "tokenization_workers",
    "version",
}  # fmt: skip
"""``Info.required`` in TEI's docs/openapi.json."""
TEI_TOKEN_FIELDS = {"id", "text", "special", "start", "stop"}
"""``SimpleToken``'s properties there (``start`` and ``stop`` nullable)."""


@pytest.fixture
def anyio_backend():
    return "asyncio"


def make_app(cohort):
    engine, encoder, rt = make_engine(cohort)
    app = create_app(engine, encoder, INFO, ApiLimits(max_client_batch_size=4))
    return app, encoder, rt


async def test_the_vllm_classify_body_on_both_paths(cohort_dir):
    app, encoder, _ = make_app(cohort_dir)
    texts = ["a good movie", "dull and slow plot"]
    async with serving(app) as client:
        shoal = await client.post("/v1/classify", json={"texts": texts})
        answers = [
            await client.post(path, json={"model": "tiny", "input": texts, "min_k": 1})
            for path in ("/v1/classify", "/classify")
        ]
        single = await client.post("/classify", json={"input": "a good movie", "user": "u1"})
        models = await client.get("/v1/models")
    assert shoal.status_code == 200 and "results" in shoal.json()
    for resp in answers:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "list" and body["model"] == "tiny"
        assert body["id"].startswith("classify-") and isinstance(body["created"], int)
        for i, (row, expect) in enumerate(zip(body["data"], shoal.json()["results"], strict=True)):
            assert row["index"] == i and row["num_classes"] == len(LABELS)
            assert row["label"] == expect["label"]
            assert row["probs"] == pytest.approx([expect["scores"][x] for x in LABELS])
        tokens = sum(len(encoder.encode(t).input_ids) for t in texts)
        assert body["usage"] == {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
    assert [row["index"] for row in single.json()["data"]] == [0]
    assert models.json()["object"] == "list"
    assert [(m["id"], m["object"]) for m in models.json()["data"]] == [("tiny", "model")]


async def test_vllm_bodies_are_refused_as_vllm_bodies(cohort_dir):
    app, _, rt = make_app(cohort_dir)
    async with serving(app) as client:
        other = await client.post("/classify", json={"model": "big", "input": "good"})
        empty = await client.post("/classify", json={"input": []})
        blank = await client.post("/classify", json={"input": ["good", "  "]})
        both = await client.post("/v1/classify", json={"input": "good", "texts": ["good"]})
        unknown = await client.post("/classify", json={"input": "good", "priority": 1})
        too_many = await client.post("/classify", json={"input": ["good"] * 5})
        shoal_typo = await client.post("/v1/classify", json={"text": ["good"]})
    assert_error(other, 404, "not_found", "'big'", "'tiny'", "/v1/models")
    assert_error(empty, 422, "validation", "empty")
    assert_error(blank, 422, "validation", "empty or blank")
    assert_error(both, 422, "validation", "texts", "unknown field")  # input: vLLM's schema
    assert_error(unknown, 422, "validation", "priority")
    assert_error(too_many, 413, "validation", "max_client_batch_size=4")
    assert_error(shoal_typo, 422, "validation", "text")  # no input: Shoal's schema
    assert rt.calls == []


async def test_tokenize_answers_tei_tokens(cohort_dir):
    app, encoder, _ = make_app(cohort_dir)
    text = "a good movie"
    async with serving(app) as client:
        one = await client.post("/tokenize", json={"inputs": text})
        batch = await client.post("/tokenize", json={"inputs": [text, "bad plot"]})
        bare = await client.post("/tokenize", json={"inputs": text, "add_special_tokens": False})
        blank = await client.post("/tokenize", json={"inputs": ["good", " "]})
        too_many = await client.post("/tokenize", json={"inputs": ["good"] * 5})
        prompt = await client.post("/tokenize", json={"inputs": "good", "prompt_name": "query"})
    (tokens,) = one.json()
    assert all(set(t) == TEI_TOKEN_FIELDS for t in tokens)
    assert [t["id"] for t in tokens] == encoder.encode(text).input_ids
    assert tokens[0]["special"] and tokens[-1]["special"]
    assert tokens[0]["start"] is None and tokens[0]["text"] == "[CLS]"
    words = [t for t in tokens if not t["special"]]
    assert [text[t["start"] : t["stop"]] for t in words] == [t["text"] for t in words]
    assert " ".join(t["text"] for t in words) == text
    assert len(batch.json()) == 2 and batch.json()[0] == tokens
    assert bare.json() == [words]
    assert_error(blank, 422, "validation")
    assert_error(too_many, 413, "validation", "max_client_batch_size=4")
    assert_error(prompt, 422, "validation", "prompt_name")


async def test_info_has_tei_fields_and_get_root_is_health(cohort_dir):
    app, encoder, _ = make_app(cohort_dir)
    async with serving(app) as client:
        info = (await client.get("/info")).json()
        root = await client.get("/")
    assert set(info) >= TEI_INFO_REQUIRED
    assert info["model_type"] == {
        "classifier": {
            "id2label": {str(i): x for i, x in enumerate(LABELS)},
            "label2id": {x: i for i, x in enumerate(LABELS)},
        }
    }
    assert info["max_input_length"] == encoder.max_length
    assert info["max_client_batch_size"] == 4 and info["auto_truncate"] is True
    assert info["format"] == "shoal-cohort" and info["n_students"] == 3
    assert root.status_code == 200 and root.json()["status"] == "ok"
