"""Multi-label and regression heads end to end on tiny random models: fine-tune from a plain
encoder, distil, save and load, evaluate, and serve (in process, the real model under the fake
runtime), with the served scores checked against transformers' own pipeline; and a plain
fine-tuned classifier served whole through the same server."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
import torch
from test_engine_fakes import FakeRuntime

from shoal import problems
from shoal.distill.distill import distill
from shoal.distill.finetune import finetune
from shoal.distill.trainer import TrainConfig
from shoal.errors import ConfigError, DataError, ModelError
from shoal.evaluation import evaluate_model
from shoal.models.cohort import ShoalModel
from shoal.models.whole_teacher import is_classifier, served_folder
from shoal.serve.server import ServeConfig, build_app
from tiny_fixtures import (
    make_teacher,
    make_tokenizer,
    tiny_distill_config,
    tiny_finetune_config,
    write_problem_folder,
)

pytestmark = pytest.mark.anyio
TEXTS = ["a good movie", "bad plot and awful film", "the film was not so nice", "sad"]
MULTI, REGRESSION, SINGLE = problems.MULTI, problems.REGRESSION, problems.SINGLE
OUTPUTS = {SINGLE: 2, MULTI: 3, REGRESSION: 1}
METRIC = {MULTI: ("micro_f1", "macro_f1", "accuracy"), REGRESSION: ("pearson", "spearman", "mse")}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@asynccontextmanager
async def serving(folder):
    app = build_app(folder, ServeConfig(), runner=FakeRuntime.load(folder))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shoal") as client:
            yield client


def pipeline_scores(folder, texts) -> list[dict[str, float]]:
    """transformers' text-classification pipeline, its default score function per head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    classify = pipeline(
        "text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder)
    )
    return [{r["label"]: r["score"] for r in rows} for rows in classify(texts, top_k=None)]


@pytest.fixture(scope="module", params=[SINGLE, MULTI, REGRESSION])
def classifier(request, tmp_path_factory):
    """A tiny random fine-tuned classifier of each problem type (its config says which)."""
    folder = tmp_path_factory.mktemp(request.param[:6])
    make_teacher(folder, num_labels=OUTPUTS[request.param], problem_type=request.param)
    return request.param, folder


@pytest.fixture(scope="module", params=[MULTI, REGRESSION])
def fine_tuned(request, tmp_path_factory):
    """(problem type, data, teacher): a head fine-tuned from a plain encoder on the type's
    synthetic data, with ``--problem-type`` given."""
    from transformers import BertConfig, BertModel

    problem_type = request.param
    root = tmp_path_factory.mktemp(f"ft-{problem_type[:5]}")
    data = write_problem_folder(root / "data", problem_type)
    encoder = root / "encoder"
    torch.manual_seed(0)
    tok = make_tokenizer(encoder)
    BertModel(
        BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64,
        )
    ).save_pretrained(encoder)  # fmt: skip
    tok.save_pretrained(encoder)
    config = tiny_finetune_config(
        encoder, data, root / "teacher", problem_type=problem_type,
        train=TrainConfig(epochs=10, lr=2e-3, batch_size=16, evals_per_epoch=1),
    )  # fmt: skip
    report = finetune(config)
    return problem_type, data, root / "teacher", report


# ------------------------------------------------------------------------------ served whole


async def test_a_served_classifier_scores_as_transformers_pipeline(classifier):
    problem_type, folder = classifier
    assert is_classifier(folder)
    expected = pipeline_scores(folder, TEXTS)
    with served_folder(folder) as cohort:
        assert cohort != folder and cohort.name == folder.name
        async with serving(cohort) as client:
            info = (await client.get("/info")).json()
            got = (await client.post("/predict", json={"inputs": [[t] for t in TEXTS]})).json()
    assert not cohort.exists()  # the converted cohort lives as long as the server
    assert info["problem_type"] == problem_type
    assert info["model_id"] == folder.name and info["n_students"] == 1
    assert info["student_layers"] == 2  # every layer of the classifier
    assert len(got) == len(TEXTS)
    for want, rows in zip(expected, got, strict=True):
        assert {r["label"] for r in rows} == set(want)
        for r in rows:
            assert r["score"] == pytest.approx(want[r["label"]], abs=1e-5)
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    if problem_type != SINGLE:  # not probabilities that sum to one
        assert any(abs(sum(r["score"] for r in rows) - 1) > 1e-3 for rows in got)


async def test_a_head_takes_another_score_function_when_asked(classifier):
    problem_type, folder = classifier
    with served_folder(folder) as cohort:
        async with serving(cohort) as client:
            body = {"inputs": [[t] for t in TEXTS[:2]], "parameters": {"function_to_apply": "none"}}
            raw = (await client.post("/predict", json=body)).json()
            body["parameters"]["function_to_apply"] = "sigmoid"
            sig = (await client.post("/predict", json=body)).json()
    for raw_rows, sig_rows in zip(raw, sig, strict=True):
        logits = {r["label"]: r["score"] for r in raw_rows}
        for r in sig_rows:
            assert r["score"] == pytest.approx(1 / (1 + np.exp(-logits[r["label"]])), abs=1e-6)


def test_serving_a_folder_that_is_neither_refuses_it_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))  # no head
    assert not is_classifier(tmp_path)
    with served_folder(tmp_path) as folder:
        assert folder == tmp_path
        with pytest.raises(ModelError, match="not a Shoal cohort"):
            build_app(folder, ServeConfig(), runner=None)


# ------------------------------------------------------------------------------ fine-tune


def test_fine_tuning_writes_the_head_its_problem_type_asks_for(fine_tuned):
    problem_type, _, teacher, report = fine_tuned
    config = json.loads((teacher / "config.json").read_text())
    assert config["problem_type"] == problem_type
    assert len(config["id2label"]) == OUTPUTS[problem_type]
    for split in ("dev", "test"):
        assert set(report[split]) == set(METRIC[problem_type])
    primary = report["test"][problems.PRIMARY[problem_type]]
    assert primary > (0.5 if problem_type == MULTI else 0.3)  # it learned the rule


def test_a_single_label_read_of_multi_label_cells_is_refused_with_the_fix(tmp_path):
    from shoal.data import load_task

    data = write_problem_folder(tmp_path, MULTI)
    assert len(load_task(data, problem_type=MULTI).splits["train"]) == 200
    with pytest.raises(DataError, match=MULTI):
        load_task(data)


def test_rdrop_is_refused_for_heads_without_a_softmax(tmp_path):
    with pytest.raises(ConfigError, match="rdrop"):
        tiny_finetune_config(tmp_path, tmp_path, tmp_path, problem_type=MULTI, rdrop=0.5)


# ------------------------------------------------------------------------------ distil and serve


@pytest.fixture(scope="module")
def cohort(fine_tuned, tmp_path_factory):
    problem_type, data, teacher, _ = fine_tuned
    out = tmp_path_factory.mktemp(f"cohort-{problem_type[:5]}")
    result = distill(tiny_distill_config(teacher, data, out, n_students=2))
    return problem_type, data, out, result


def test_the_prefix_table_and_meta_speak_the_task_metric(cohort):
    problem_type, _, out, result = cohort
    metric = problems.PRIMARY[problem_type]
    assert result["metric"] == metric
    table = result["prefix_accuracy"]
    assert [row["k"] for row in table] == [1, 2]
    for row in table:
        for split in ("dev", "test"):
            assert {f"{split}_{m}" for m in METRIC[problem_type]} <= set(row)
    if problem_type == REGRESSION:
        assert all(row["dev_disagreement"] is None for row in table)
    loaded = ShoalModel.from_pretrained(out)
    assert loaded.config.problem_type == problem_type
    thresholds = loaded.config.thresholds
    if problem_type == MULTI:
        assert len(thresholds) == 3 and all(t in problems.THRESHOLD_GRID for t in thresholds)
    else:
        assert thresholds is None


def test_eval_scores_the_cohort_as_the_table_does(cohort):
    problem_type, data, out, result = cohort
    report = evaluate_model(str(out), str(data), by_k=True)
    assert report["problem_type"] == problem_type
    for row, stored in zip(report["by_k"], result["prefix_accuracy"], strict=True):
        for m in METRIC[problem_type]:
            assert row[m] == pytest.approx(stored[f"test_{m}"], abs=1e-4)


async def test_a_served_cohort_answers_in_its_head(cohort):
    problem_type, _, out, _ = cohort
    model = ShoalModel.from_pretrained(out).eval()
    async with serving(out) as client:
        info = (await client.get("/info")).json()
        predicted = (await client.post("/predict", json={"inputs": [[t] for t in TEXTS]})).json()
        classified = (await client.post("/v1/classify", json={"texts": TEXTS})).json()
    assert info["problem_type"] == problem_type
    assert info["thresholds"] == model.config.thresholds
    for rows, result in zip(predicted, classified["results"], strict=True):
        logits = np.asarray(result["logits"])
        want = problems.apply(problems.FUNCTIONS[problem_type], logits[None])[0]
        scores = {r["label"]: r["score"] for r in rows}
        assert [scores[label] for label in result["scores"]] == pytest.approx(want, abs=1e-6)
        if problem_type == MULTI:
            fired = [
                label
                for (label, s), t in zip(result["scores"].items(), info["thresholds"], strict=True)
                if s >= t
            ]
            assert sorted(result["labels"]) == sorted(fired)
        else:
            assert "labels" not in result
