"""scripts/mix_cohorts.py: students taken in turn from two cohorts, scored per prefix."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from shoal.models.cohort import ShoalModel

SCRIPT = Path(__file__).parents[3] / "scripts" / "mix_cohorts.py"


def _cohort(
    teacher_dir: Path, out: Path, n: int, seed: int, combine: str = "mean", per_student=False
) -> Path:
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir)
    built = ShoalModel.from_teacher(teacher, n, 1, "bottom", head_per_student=per_student)
    model = ShoalModel(replace(built.config, combine=combine)).eval()
    model.load_state_dict(built.state_dict())
    torch.manual_seed(seed)
    with torch.no_grad():  # students distinct from the teacher's layers and from each other
        for p in model.students.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(out, AutoTokenizer.from_pretrained(teacher_dir))
    return out


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True
    )


def test_students_alternate_and_each_prefix_is_scored(tmp_path, tiny_teacher, tiny_data):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mix_cohorts", SCRIPT)
    mix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mix)
    a = ShoalModel.from_pretrained(_cohort(tiny_teacher, tmp_path / "a", 2, seed=1))
    b = ShoalModel.from_pretrained(_cohort(tiny_teacher, tmp_path / "b", 1, seed=2))
    m = mix.mixed(a, b, 3)
    order = [a.students[0], b.students[0], a.students[1]]
    for got, want in zip(m.students, order):
        for x, y in zip(got.parameters(), want.parameters()):
            assert torch.equal(x, y)
    assert m.config.combine == "mean"

    done = _run(tmp_path / "a", tmp_path / "b", "--data", tiny_data, "--split", "dev",
                "--max-length", 32, "--students", 3)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["k"] for r in rows] == [1, 2, 3]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_cohorts_of_other_teachers_or_not_averaged_are_refused(tmp_path, tiny_data):
    from tiny_fixtures import make_teacher

    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    make_teacher(t1, seed=0)
    make_teacher(t2, seed=1)
    a = _cohort(t1, tmp_path / "a", 1, seed=1)
    other = _cohort(t2, tmp_path / "b", 1, seed=1)
    summed = _cohort(t1, tmp_path / "s", 1, seed=1, combine="sum")
    own_heads = _cohort(t1, tmp_path / "h", 1, seed=1, per_student=True)
    for second, message in (
        (other, "different embeddings: mix cohorts distilled from one teacher"),
        (summed, "averaged cohorts with one shared head"),
        (own_heads, "averaged cohorts with one shared head"),
    ):
        done = _run(a, second, "--data", tiny_data, "--students", 2)
        assert done.returncode != 0
        assert message in done.stderr and "Traceback" not in done.stderr
    done = _run(a, a, "--data", tiny_data, "--students", 3)
    assert "the two cohorts hold 2 students in all" in done.stderr
