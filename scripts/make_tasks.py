"""Build a multi-label and a regression task of real text from the shared datasets.

No multi-label or graded-regression text set ships on the registries this project can reach,
so both are made from labelled real text, deterministically (``--seed``):

- ``agnews-topics`` (multi_label_classification, 4 labels): one or two AG News paragraphs
  joined; the label is the set of their topics (World, Sports, Business, Sci/Tech). A joined
  text of two topics must fire both labels, one of a single topic only that one.
- ``sst2-share`` (regression, 1 output): one to three SST-2 sentences of 8 words or more
  joined; the label is the share of them that are positive (0, 1/3, 1/2, 2/3 or 1), a
  graded sentiment score of a short passage.

Each split is built from the same split of its source (AG News: the training sample's last
1,000 paragraphs make dev; SST-2: its train/dev/test), so no text of a test example is seen
in training. Usage::

    python scripts/make_tasks.py --data ../shared/data --out runs/tasks
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

TOPIC_SIZES = {"train": 9000, "dev": 1000, "test": 2000}
SHARE_SIZES = {"train": 12000, "dev": 1000, "test": 1000}
MIN_WORDS = 8


def _read(path: Path, text_column: str) -> list[tuple[str, int]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r[text_column].strip(), int(r["label"])) for r in rows]


def _write(path: Path, column: str, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(f"{column}\tlabel\n")
        for text, label in rows:
            f.write(f"{text.replace(chr(9), ' ')}\t{label}\n")


def topics(pool: list[tuple[str, int]], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` texts of one (40%) or two (60%) paragraphs of ``pool``; label: their topic ids."""
    out = []
    for _ in range(n):
        parts = rng.sample(pool, 1 if rng.random() < 0.4 else 2)
        ids = sorted({label for _, label in parts})
        out.append((" ".join(text for text, _ in parts), ",".join(map(str, ids))))
    return out


def share(pool: list[tuple[str, int]], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` passages of one to three sentences of ``pool``; label: the share that is positive."""
    out = []
    for _ in range(n):
        parts = rng.sample(pool, rng.randint(1, 3))
        value = sum(label for _, label in parts) / len(parts)
        out.append((" ".join(text for text, _ in parts), f"{value:.4f}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/tasks"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("agnews/train.tsv", "agnews/test.tsv", "sst2/train.tsv"):
        if not (args.data / name).is_file():
            raise SystemExit(f"{args.data / name} is missing; pass --data the shared data folder")

    rng = random.Random(args.seed)
    news = _read(args.data / "agnews/train.tsv", "text")
    news_pools = {"train": news[:-1000], "dev": news[-1000:]}
    news_pools["test"] = _read(args.data / "agnews/test.tsv", "text")
    for split, size in TOPIC_SIZES.items():
        _write(
            args.out / "agnews-topics" / f"{split}.tsv",
            "text",
            topics(news_pools[split], size, rng),
        )

    for split, size in SHARE_SIZES.items():
        pool = [
            (text, label)
            for text, label in _read(args.data / f"sst2/{split}.tsv", "sentence")
            if len(text.split()) >= MIN_WORDS
        ]
        _write(args.out / "sst2-share" / f"{split}.tsv", "text", share(pool, size, rng))
    print(f"wrote {args.out}/agnews-topics and {args.out}/sst2-share")


if __name__ == "__main__":
    main()
