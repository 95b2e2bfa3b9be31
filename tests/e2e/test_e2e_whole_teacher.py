"""`shoal serve TEACHER_FOLDER` as a process: a plain fine-tuned multi-label classifier served
whole from worker processes answers with transformers' pipeline scores, its converted folder
is gone after a clean exit, and `--ray` refuses it by name."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess
from tiny_fixtures import make_teacher

pytestmark = pytest.mark.slow
TEXTS = ["a good movie", "bad plot and awful film", "the film was not so nice"]


def converted_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("shoal-teacher-*"))


def test_a_multi_label_teacher_is_served_whole(tmp_path, profile_cache):
    from transformers import pipeline

    teacher = tmp_path / "moderation"
    model, tok = make_teacher(
        teacher, num_labels=3, layers=3, problem_type="multi_label_classification"
    )
    classify = pipeline("text-classification", model=model, tokenizer=tok)
    want = [{r["label"]: r["score"] for r in rows} for rows in classify(TEXTS, top_k=None)]
    before = converted_folders()
    server = ServerProcess(
        teacher, tmp_path / "server.log", "--workers", "2", "--profile-cache", str(profile_cache)
    )
    try:
        server.wait_ready()
        assert len(converted_folders() - before) == 1
        info = httpx.get(server.url + "/info", timeout=30, trust_env=False).json()
        assert info["model_id"] == "moderation" and info["n_students"] == 1
        assert info["student_layers"] == 3
        assert info["problem_type"] == "multi_label_classification"
        body = {"inputs": [[t] for t in TEXTS]}
        resp = httpx.post(server.url + "/predict", json=body, timeout=60, trust_env=False)
        assert resp.status_code == 200, resp.text
        for rows, expected in zip(resp.json(), want, strict=True):
            assert {r["label"]: pytest.approx(r["score"], abs=1e-5) for r in rows} == expected
    finally:
        assert server.terminate() == 0, server.output()
    assert converted_folders() == before


def test_ray_refuses_a_teacher_folder_by_name(tmp_path):
    make_teacher(tmp_path / "t", num_labels=2)
    r = subprocess.run(
        [sys.executable, "-m", "shoal.serve.server", str(tmp_path / "t"), "--ray"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "is a Hugging Face classifier; --ray serves cohort folders" in r.stderr
