"""What a classifier's head means, by Hugging Face's ``problem_type``: how its logits become
scores, how a data file writes its labels, and which metrics judge it. No torch here.

- ``single_label_classification``: one class per text; softmax; accuracy (and F1 of class 1
  for two classes). A data file's label is the class id.
- ``multi_label_classification``: any number of classes per text; a sigmoid per class,
  a class predicted where its probability reaches its threshold (0.5 unless the cohort
  stores its own); micro- and macro-F1 and exact-set accuracy. A data file's label is the
  comma-separated class ids (``0,3``; empty for none).
- ``regression``: a real value per output; the raw logits; Pearson's and Spearman's
  correlation and the mean squared error. A data file's label is the number.

A config with no ``problem_type`` is read as transformers' text-classification pipeline
reads it: a single output is a sigmoid score (``multi_label_classification`` of one class,
as cross-encoders and TEI's rerankers are), more outputs are single-label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shoal.errors import ConfigError, DataError
from shoal.metrics import accuracy, f1_binary

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)

FUNCTIONS = {SINGLE: "softmax", MULTI: "sigmoid", REGRESSION: "none"}
"""The score function each head calls for (transformers' pipeline and TEI apply the same)."""

PRIMARY = {SINGLE: "accuracy", MULTI: "micro_f1", REGRESSION: "pearson"}
"""The metric that selects a student's weights, prunes students and heads the tables."""

Label = int | float | tuple[int, ...]
"""A class id (single-label), a multi-hot tuple (multi-label) or a value (regression)."""


def check(problem_type: str, num_labels: int | None = None) -> str:
    """``problem_type`` if Shoal supports it (and its output count fits), else a ConfigError."""
    if problem_type not in PROBLEM_TYPES:
        raise ConfigError(
            f"problem_type={problem_type!r} is not supported; use one of {', '.join(PROBLEM_TYPES)}"
        )
    if problem_type == SINGLE and num_labels is not None and num_labels < 2:
        raise ConfigError(
            f"a {SINGLE} head needs 2 or more labels, not {num_labels}; a single output is "
            f"{MULTI} (a sigmoid score) or {REGRESSION}"
        )
    if problem_type == REGRESSION and num_labels not in (None, 1):
        raise ConfigError(
            f"a {REGRESSION} head of {num_labels} outputs is not supported; Shoal distils "
            "regression heads of one output"
        )
    return problem_type


def of_config(config: Any) -> str:
    """The problem type of a transformers config or a config dict (see the module's note)."""
    get = config.get if isinstance(config, Mapping) else lambda k: getattr(config, k, None)
    found = get("problem_type")
    n = int(get("num_labels") or 2)
    if found is None:
        return MULTI if n == 1 else SINGLE
    return check(str(found), n)


# --------------------------------------------------------------------------- labels in files


def parse_label(raw: str, problem_type: str, where: str) -> Label:
    """One label cell of a data file (``where`` names the file and line for the error)."""
    if problem_type == REGRESSION:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise DataError(f"{where}: label {raw!r} is not a finite number; regression labels are")
        return value
    if problem_type == MULTI:
        try:
            ids = sorted({int(p) for p in raw.split(",") if p.strip()})
        except ValueError:
            raise DataError(
                f"{where}: label {raw!r} is not a list of class ids; multi-label labels are "
                "comma-separated ids such as 0,3 (empty for none)"
            ) from None
        if ids and ids[0] < 0:
            raise DataError(f"{where}: class id {ids[0]} is negative")
        return tuple(ids)  # ids for now; ``multi_hot`` once the number of classes is known
    try:
        label = int(raw)
    except ValueError:
        raise DataError(
            f"{where}: label {raw!r} is not an integer; labels must be 0..num_labels-1 (a "
            f"regression or multi-label file needs the model's problem_type: {MULTI} or "
            f"{REGRESSION})"
        ) from None
    if label < 0:
        raise DataError(
            f"{where}: label {label} is outside 0..num_labels-1 (class ids count from 0)"
        )
    return label


def classes_needed(labels: Sequence[Label], problem_type: str) -> int:
    """The fewest outputs a head needs for these labels (as ``parse_label`` returns them)."""
    if problem_type == REGRESSION:
        return 1
    if problem_type == MULTI:
        return max((max(ids) + 1 for ids in labels if ids), default=1)  # type: ignore[arg-type, type-var]
    return max(int(x) for x in labels) + 1  # type: ignore[arg-type]


def multi_hot(ids: Sequence[int], n: int) -> tuple[int, ...]:
    """Class ids as a 0/1 tuple of ``n`` entries."""
    row = [0] * n
    for i in ids:
        row[i] = 1
    return tuple(row)


# --------------------------------------------------------------------------- scores and metrics


def apply(function: str, logits: np.ndarray) -> np.ndarray:
    """'softmax', 'sigmoid' or 'none' over the last axis of float logits."""
    if function == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ConfigError(f"function_to_apply={function!r}; use softmax, sigmoid or none")


def predict(
    logits: np.ndarray, problem_type: str, thresholds: Sequence[float] | None = None
) -> np.ndarray:
    """(N, C) logits -> class ids (N,), 0/1 rows (N, C) or values (N, C) by problem type."""
    if problem_type == SINGLE:
        return logits.argmax(-1)
    if problem_type == MULTI:
        t = np.asarray(thresholds if thresholds is not None else [0.5] * logits.shape[-1])
        return (apply("sigmoid", logits) >= t).astype(np.int64)
    return logits


def metrics(
    logits: np.ndarray,
    labels: Sequence[Label],
    problem_type: str,
    thresholds: Sequence[float] | None = None,
) -> dict[str, float]:
    """The problem type's metrics of (N, C) logits against the labels (fractions, except the
    correlations, in -1..1, and the mean squared error)."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) != len(labels) or not len(labels):
        raise ValueError(f"need equal, non-empty inputs, got {len(logits)} and {len(labels)}")
    pred = predict(logits, problem_type, thresholds)
    if problem_type == SINGLE:
        gold = [int(x) for x in labels]  # type: ignore[arg-type]
        out = {"accuracy": accuracy(pred.tolist(), gold)}
        if logits.shape[-1] == 2:
            out["f1"] = f1_binary(pred.tolist(), gold)
        return out
    if problem_type == MULTI:
        gold_rows = np.asarray(labels, dtype=np.int64).reshape(pred.shape)
        return _multi_label(pred, gold_rows)
    values = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    if values.shape != pred.shape:
        raise ValueError(f"{values.shape[1]} values per label but {pred.shape[1]} outputs")
    return {
        "pearson": _mean_columns(pred, values, _pearson),
        "spearman": _mean_columns(pred, values, lambda a, b: _pearson(_ranks(a), _ranks(b))),
        "mse": float(((pred - values) ** 2).mean()),
    }


def _multi_label(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    tp = (pred & gold).sum(0)
    fp = (pred & (1 - gold)).sum(0)
    fn = ((1 - pred) & gold).sum(0)

    def f1(t: Any, p: Any, n: Any) -> float:
        return 0.0 if t == 0 else float(2 * t / (2 * t + p + n))

    return {
        "micro_f1": f1(tp.sum(), fp.sum(), fn.sum()),
        "macro_f1": float(np.mean([f1(*c) for c in zip(tp, fp, fn)])),
        "accuracy": float((pred == gold).all(axis=1).mean()),
    }


def _mean_columns(pred: np.ndarray, gold: np.ndarray, fn: Any) -> float:
    return float(np.mean([fn(pred[:, j], gold[:, j]) for j in range(pred.shape[1])]))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return 0.0 if denom == 0 else float((a * b).sum() / denom)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank (what Spearman's correlation needs)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse] if len(values) < len(x) else ranks


THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The probabilities ``fit_thresholds`` tries per label: 0.05, 0.10, ..., 0.95."""


def fit_thresholds(logits: np.ndarray, labels: Sequence[Label]) -> list[float]:
    """Per label of a multi-label head, the probability threshold (of ``THRESHOLD_GRID``) with
    the best F1 on these examples (dev), the one nearest 0.5 among equals; 0.5 for a label no
    example has, or none misses."""
    probs = apply("sigmoid", np.asarray(logits, dtype=np.float64))
    gold = np.asarray(labels, dtype=np.int64).reshape(probs.shape).astype(bool)
    grid = sorted(THRESHOLD_GRID, key=lambda t: abs(t - 0.5))
    out = []
    for j in range(probs.shape[1]):
        if gold[:, j].all() or not gold[:, j].any():
            out.append(0.5)
            continue

        def f1(t: float, j: int = j) -> float:
            pred = probs[:, j] >= t
            tp = int((pred & gold[:, j]).sum())
            return 2 * tp / (int(pred.sum()) + int(gold[:, j].sum()))

        out.append(max(grid, key=f1))  # max keeps the first best: the nearest 0.5
    return out


def disagreement(a: np.ndarray, b: np.ndarray, problem_type: str) -> float | None:
    """The share of rows on which two models' predictions (``predict``) differ; None for
    regression, whose predictions always differ a little."""
    if problem_type == REGRESSION:
        return None
    if problem_type == MULTI:
        return float((a != b).any(axis=1).mean())
    return float((a != b).mean())
