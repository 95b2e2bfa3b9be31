"""scripts/pooling_ab.py: the mean-pooled head ignores padding; both heads train and score."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[3] / "scripts" / "pooling_ab.py"


def _module():
    spec = importlib.util.spec_from_file_location("pooling_ab", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_pooling_reads_only_the_real_tokens(tiny_teacher):
    from shoal.models.teacher import load_teacher

    model, tok = load_teacher(tiny_teacher)
    forward = _module().mean_pooled(model.eval())
    ids = tok(["good movie", "the plot was not so bad"], padding=True, return_tensors="pt")
    alone = tok(["good movie"], return_tensors="pt")
    with torch.inference_mode():
        padded = forward(dict(ids))
        single = forward(dict(alone))
        hidden = model.base_model(**alone).last_hidden_state
    torch.testing.assert_close(padded[0], single[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, model.classifier(hidden.mean(1)), rtol=1e-5, atol=1e-5)


def test_both_heads_train_and_score(tiny_teacher, tiny_data):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_teacher), "--data", str(tiny_data)]
        + ["--max-length", "32", "--lr", "1e-3", "--batch-size", "8"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["pooling"] for r in rows] == ["cls", "mean"]
    assert all(0 <= r[s]["accuracy"] <= 1 for r in rows for s in ("dev", "test"))
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_data / "nope"), "--data", str(tiny_data)],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "error:" in missing.stderr
    assert "Traceback" not in missing.stderr
