"""scripts/ensemble_teachers.py: members and ensembles scored, bad input refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[3] / "scripts" / "ensemble_teachers.py"


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True
    )


def test_an_ensemble_of_one_checkpoint_twice_scores_like_it(tmp_path, tiny_data):
    from tiny_fixtures import make_teacher

    a, b = tmp_path / "a", tmp_path / "b"
    make_teacher(a, seed=0)
    make_teacher(b, seed=1)
    done = _run(a, a, b, "--data", tiny_data, "--split", "dev", "--max-length", 32)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["models"] for r in rows] == [
        [str(a)],
        [str(a)],
        [str(b)],
        [str(a)] * 2,
        [str(a)] * 2 + [str(b)],
    ]
    assert rows[3]["accuracy"] == rows[0]["accuracy"]  # the mean of identical members
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_bad_input_is_refused_with_a_message(tmp_path, tiny_data):
    from tiny_fixtures import make_teacher

    make_teacher(tmp_path / "a", seed=0)
    one = _run(tmp_path / "a", "--data", tiny_data)
    assert one.returncode != 0 and "at least two" in one.stderr
    missing = _run(tmp_path / "a", tmp_path / "nope", "--data", tiny_data, "--split", "dev")
    assert (
        missing.returncode != 0 and "error:" in missing.stderr and "Traceback" not in missing.stderr
    )
    split = _run(tmp_path / "a", tmp_path / "a", "--data", tiny_data, "--split", "val")
    assert split.returncode != 0 and "no 'val' split" in split.stderr
