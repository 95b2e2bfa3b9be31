"""A cohort folder with a corrupt field: `shoal eval` and the server's start say so in one line,
exit code 2, no traceback, before the model is built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from shoal.cli import app
from shoal.models.cohort import ShoalConfig, ShoalModel
from tiny_fixtures import make_tokenizer

runner = CliRunner()

CASES = [  # (file, field, value, what the one line names)
    ("config.json", "hidden_size", "big", 'hidden_size is "big"'),
    ("config.json", "n_students", 2.5, "n_students is 2.5"),
    ("config.json", "hidden_size", 16_384, "the config and model.safetensors disagree"),
    ("shoal_meta.json", "max_length", "big", 'max_length is "big"'),
    ("shoal_meta.json", "max_length", -5, "max_length is -5"),
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A tiny random cohort (2 students of 1 layer, hidden 32) with its tokenizer."""
    folder = tmp_path_factory.mktemp("corrupt") / "cohort"
    tok = make_tokenizer(folder)
    torch.manual_seed(0)
    model = ShoalModel(
        ShoalConfig(
            vocab_size=len(tok), hidden_size=32, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, n_students=2, student_layers=1,
        )
    )  # fmt: skip
    model.meta = {"max_length": 32, "prefix_accuracy": [{"k": 1, "dev_accuracy": 0.5}]}
    model.save_pretrained(folder, tok)
    return folder


def _corrupt(cohort: Path, tmp_path: Path, name: str, field: str, value) -> Path:
    folder = tmp_path / "bad"
    shutil.copytree(cohort, folder)
    data = json.loads((folder / name).read_text())
    data[field] = value
    (folder / name).write_text(json.dumps(data))
    return folder


def _error_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.startswith("error:")]


@pytest.mark.parametrize(("name", "field", "value", "said"), CASES, ids=repr)
def test_eval_on_a_corrupt_cohort_is_one_line(
    cohort, tmp_path, tiny_data, monkeypatch, name, field, value, said
):
    folder = _corrupt(cohort, tmp_path, name, field, value)
    monkeypatch.setattr(ShoalModel, "__init__", _never)
    r = runner.invoke(app, ["eval", str(folder), "--data", str(tiny_data)])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # no other exception escaped
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert str(folder) in lines[0] and said in lines[0], lines[0]


def _never(*args, **kwargs):
    raise AssertionError("reached past the checks of the cohort's files")


def test_the_server_refuses_a_corrupt_meta_before_starting(cohort, tmp_path, monkeypatch, capsys):
    from shoal.serve import server

    folder = _corrupt(cohort, tmp_path, "shoal_meta.json", "max_length", -5)
    monkeypatch.setattr(server, "start_runtime", _never)
    assert server.main([str(folder), "--port", "9", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = _error_lines(err)
    assert line.startswith(f"error: {folder / 'shoal_meta.json'}: max_length is -5;"), line


def test_shoal_serve_process_exits_2_in_one_line(cohort, tmp_path):
    folder = _corrupt(cohort, tmp_path, "config.json", "num_attention_heads", "4")
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.serve.server", str(folder), "--port", "9", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert f'{folder / "config.json"}: num_attention_heads is "4"' in line, line
