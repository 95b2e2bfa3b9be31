"""scripts/average_checkpoints.py: the soup is the elementwise mean and loads like a checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

SCRIPT = Path(__file__).parents[3] / "scripts" / "average_checkpoints.py"


def _run(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True
    )


def test_average_is_the_mean_and_loads(tmp_path: Path) -> None:
    from tiny_fixtures import make_teacher

    a, b = tmp_path / "a", tmp_path / "b"
    make_teacher(a, seed=0)
    make_teacher(b, seed=1)
    done = _run(tmp_path / "soup", a, b)
    assert done.returncode == 0, done.stderr
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert soup.keys() == wa.keys()
    for name, value in soup.items():
        torch.testing.assert_close(value, (wa[name] + wb[name]) / 2)
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "soup")


def test_mismatched_or_missing_checkpoints_are_refused(tmp_path: Path) -> None:
    from tiny_fixtures import make_teacher

    a, deeper = tmp_path / "a", tmp_path / "deeper"
    make_teacher(a)
    make_teacher(deeper, layers=3)
    mismatch = _run(tmp_path / "soup", a, deeper)
    assert mismatch.returncode != 0 and "does not match" in mismatch.stderr
    missing = _run(tmp_path / "soup", a, tmp_path / "nowhere")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    single = _run(tmp_path / "soup", a)
    assert single.returncode != 0 and "at least two" in single.stderr
    assert not (tmp_path / "soup").exists()
