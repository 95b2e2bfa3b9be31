"""scripts/make_tasks.py: the multi-label and regression tasks it builds read back as those
problem types, their labels follow from the source labels, and no split shares a text."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from shoal.data import load_task

SCRIPT = Path(__file__).parents[2] / "scripts" / "make_tasks.py"
TOPICS = ["world", "sports", "business", "science"]


def _source(root: Path) -> Path:
    """A tiny stand-in of the shared data: AG News paragraphs named by topic, SST-2 sentences."""
    (root / "agnews").mkdir(parents=True)
    for split, n in (("train", 1300), ("test", 300)):
        rows = [f"{split} paragraph {i} about {TOPICS[i % 4]}\t{i % 4}" for i in range(n)]
        (root / "agnews" / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    (root / "sst2").mkdir()
    for split, n in (("train", 400), ("dev", 100), ("test", 100)):
        rows = [
            f"{split} sentence {i} is long enough and {'good' if i % 2 else 'bad'}\t{i % 2}"
            for i in range(n)
        ] + ["too short\t1"]
        (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_builds_both_tasks_with_labels_that_follow_from_the_sources(tmp_path):
    out = tmp_path / "tasks"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(_source(tmp_path / "data")),
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

    topics = load_task(out / "agnews-topics", problem_type="multi_label_classification")
    assert topics.num_labels == 4
    for row in _rows(out / "agnews-topics" / "train.tsv"):
        named = {TOPICS.index(w) for w in row["text"].split() if w in TOPICS}
        assert {int(i) for i in row["label"].split(",")} == named
    texts = {
        s: {p for row in _rows(out / "agnews-topics" / f"{s}.tsv") for p in row["text"].split()}
        for s in ("train", "dev", "test")
    }
    assert "test" not in texts["train"] | texts["dev"] and "train" not in texts["test"]

    share = load_task(out / "sst2-share", problem_type="regression")
    assert set(share.splits) == {"train", "dev", "test"}
    for row in _rows(out / "sst2-share" / "test.tsv"):
        assert "too short" not in row["text"] and "train" not in row["text"]
        moods = [w for w in row["text"].split() if w in ("good", "bad")]
        assert 1 <= len(moods) <= 3
        assert float(row["label"]) == round(moods.count("good") / len(moods), 4)


def test_a_missing_source_is_named(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "agnews/train.tsv is missing" in r.stderr
