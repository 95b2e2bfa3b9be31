"""Baseline teacher servers answer TEI-style /predict like Shoal does."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from shoal.bench.baselines import BaselineConfig, TeacherClassifier, fastapi_app, parse_inputs


def test_parse_inputs_shapes_agree_with_the_server():
    from shoal.serve.api.schemas import PredictRequest, parse_predict_inputs

    good = (
        {"inputs": "hi"},
        {"inputs": ["a"]},
        {"inputs": ["a", "b"]},
        {"inputs": [["a"], ["b", "c"]]},
    )
    for body in good:
        assert parse_inputs(body) == parse_predict_inputs(PredictRequest(**body).inputs)
    assert parse_inputs({"inputs": ["a"]}) == ([("a", None)], False)
    assert parse_inputs({"inputs": [["a"], ["b", "c"]]}) == ([("a", None), ("b", "c")], True)
    for bad in ({"inputs": 3}, {"inputs": []}, {}, {"inputs": [["a", "b", "c"]]}, [1]):
        with pytest.raises(ValueError):
            parse_inputs(bad)


def test_onnx_matches_torch_with_padding(tiny_teacher):
    texts = ["good movie", "the plot was very very bad and sad", "a"]
    torch_clf = TeacherClassifier(BaselineConfig(model=str(tiny_teacher), backend="torch"))
    onnx_clf = TeacherClassifier(BaselineConfig(model=str(tiny_teacher), backend="onnx"))
    np.testing.assert_allclose(
        onnx_clf.probabilities(texts, None), torch_clf.probabilities(texts, None), atol=1e-5
    )


def test_int8_teacher_is_quantized_and_close(tiny_teacher):
    import onnx

    texts = ["good movie", "the plot was very very bad and sad", "a"]
    fp32 = TeacherClassifier(BaselineConfig(model=str(tiny_teacher), backend="onnx"))
    int8 = TeacherClassifier(BaselineConfig(model=str(tiny_teacher), backend="onnx-int8"))
    ops = {n.op_type for n in onnx.load(int8.path).graph.node}
    assert "MatMulInteger" in ops
    a, b = fp32.probabilities(texts, None), int8.probabilities(texts, None)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, atol=0.02)


def test_dynamic_batching_server_answers_every_request(tiny_teacher):
    app = fastapi_app(BaselineConfig(model=str(tiny_teacher), max_batch=4, max_wait_ms=2))

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                singles = await asyncio.gather(
                    *[client.post("/predict", json={"inputs": f"good film {i}"}) for i in range(10)]
                )
                batch = await client.post("/predict", json={"inputs": [["bad"], ["good"]]})
                bad = await client.post("/predict", json={"inputs": 5})
        return singles, batch, bad

    singles, batch, bad = asyncio.run(go())
    assert all(r.status_code == 200 for r in singles)
    top = singles[0].json()
    assert len(top) == 2 and top[0]["score"] >= top[1]["score"]
    assert abs(sum(x["score"] for x in top) - 1) < 1e-5
    assert len(batch.json()) == 2
    assert bad.status_code == 422 and "inputs" in bad.json()["error"]
