"""scripts/teacher_sweep.py: runs recipes side by side, selects by dev, reports every run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[3] / "scripts" / "teacher_sweep.py"


def test_runs_every_recipe_and_selects_by_dev(tiny_teacher, tiny_data, tmp_path):
    out = tmp_path / "sweep"
    r = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            str(tiny_teacher),
            "--data",
            str(tiny_data),
            "--out",
            str(out),
            "--parallel",
            "2",
            "--common",
            "--epochs 1 --max-length 32 --evals-per-epoch 1 --device cpu --threads 1",
            "slow=--lr 1e-5",
            "fast=--lr 1e-3",
            "broken=--lr 5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1, r.stdout + r.stderr  # one recipe cannot run: the exit says so
    rows = {row["name"]: row for row in map(json.loads, (out / "sweep.jsonl").open())}
    assert set(rows) == {"slow", "fast", "broken"}
    assert rows["broken"]["exit"] == 2 and "dev" not in rows["broken"]
    assert "lr=5.0 must be in (0, 1)" in (out / "broken" / "sweep.log").read_text()
    for name in ("slow", "fast"):
        assert rows[name]["exit"] == 0 and (out / name / "config.json").is_file()
        assert rows[name]["device"] == "cpu" and "--lr" in rows[name]["command"]
    best = max(("slow", "fast"), key=lambda n: rows[n]["dev"]["accuracy"])
    assert f"selected by dev: {best} " in r.stdout
    assert "failed: broken" in r.stdout


def test_bad_recipes_are_refused(tmp_path):
    for recipe in ("no-equals-sign", "a/b=--lr 1e-5"):
        r = subprocess.run(
            [sys.executable, str(SCRIPT), "--data", "x", "--out", str(tmp_path), recipe],
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0 and "must be NAME=FLAGS" in r.stderr
