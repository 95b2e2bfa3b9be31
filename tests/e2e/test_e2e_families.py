"""Every teacher family through every command: fine-tune, distil (each method and layer plan),
evaluate, and serve the cohort over HTTP from worker processes."""

from __future__ import annotations

from dataclasses import asdict

import httpx
import pytest
import torch

from conftest import ServerProcess
from shoal.distill.distill import distill
from shoal.distill.finetune import finetune
from shoal.distill.trainer import TrainConfig
from shoal.evaluation import evaluate_model
from shoal.models.cohort import ShoalModel
from shoal.models.cohort_folder import label_names, load_tokenizer
from tiny_fixtures import FAMILY_NAMES, make_family_teacher, tiny_distill_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"teacher-{request.param}")
    make_family_teacher(folder, request.param, layers=4)
    return request.param, folder


def test_finetune_distil_eval_and_serve(family_dir, tiny_pair_data, tmp_path, profile_cache):
    family, teacher_dir = family_dir
    from tiny_fixtures import tiny_finetune_config

    tuned = tmp_path / "teacher"
    report = finetune(tiny_finetune_config(teacher_dir, tiny_pair_data, tuned))
    assert 0.0 <= report["test"]["accuracy"] <= 1.0
    assert evaluate_model(tuned, tiny_pair_data, max_length=32)["accuracy"] == pytest.approx(
        report["test"]["accuracy"]
    )
    cohort_dir = tmp_path / "cohort"
    result = distill(tiny_distill_config(tuned, tiny_pair_data, cohort_dir, n_students=2))
    assert [row["k"] for row in result["prefix_accuracy"]] == [1, 2]
    cohort = ShoalModel.from_pretrained(cohort_dir)
    assert cohort.config.family == family
    scored = evaluate_model(cohort_dir, tiny_pair_data, max_length=32, k=2)
    assert scored["accuracy"] == pytest.approx(result["prefix_accuracy"][1]["test_accuracy"])

    # served from two worker processes, the answers are the cohort's own
    texts, pairs = ["good movie", "the plot was awful"], ["a film", "not so great"]
    tok = load_tokenizer(cohort_dir)
    batch = tok(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = cohort(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), k=2
        ).logits.softmax(-1)
    labels = label_names(asdict(cohort.config), cohort.meta)
    server = ServerProcess(
        cohort_dir,
        tmp_path / "server.log",
        "--workers", "2", "--no-pruning", "--profile-cache", str(profile_cache),
    )  # fmt: skip
    try:
        server.wait_ready()
        body = {"inputs": [[t, p] for t, p in zip(texts, pairs)], "raw_scores": False}
        resp = httpx.post(server.url + "/predict", json=body, timeout=60, trust_env=False)
        assert resp.status_code == 200, resp.text
        for answer, probs in zip(resp.json(), want):
            scores = {a["label"]: a["score"] for a in answer}
            for i, label in enumerate(labels):
                assert scores[label] == pytest.approx(float(probs[i]), abs=1e-4)
        assert int(resp.headers["x-students-used"]) == 2
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("method", "init", "layers"),
    [("stack", "skip", 2), ("boost", "0,3/1,2", 2), ("average", "spread", 1)],
)
def test_every_method_and_plan_distils_an_mpnet_teacher(tmp_path, tiny_data, method, init, layers):
    teacher = tmp_path / "mpnet"
    make_family_teacher(teacher, "mpnet", layers=4)
    out = tmp_path / "cohort"
    cfg = tiny_distill_config(
        teacher, tiny_data, out, n_students=2, student_layers=layers, method=method, init=init,
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=32, seed=0),
    )  # fmt: skip
    result = distill(cfg)
    assert len(result["prefix_accuracy"]) == 2
    cohort = ShoalModel.from_pretrained(out)
    assert cohort.config.relative_attention_num_buckets == 32
    expected = {"skip": [[1, 3], [1, 3]], "0,3/1,2": [[0, 3], [1, 2]], "spread": [[0], [1]]}
    assert cohort.meta["init_layers"] == expected[init]
    assert cohort.config.combine == ("mean" if method == "average" else "sum")
