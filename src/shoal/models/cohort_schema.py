"""What a cohort's ``config.json`` and ``shoal_meta.json`` may hold: every field Shoal reads, with
its type and range, checked before anything is allocated (no torch here).

Each field is a :class:`Field`: a :class:`Rule` (the values it takes, said in words) and what
it means. Rules across fields follow the tables: heads divide the width, the pad id is a row
of the token table, class ids lie below ``num_labels``, and, across the two files, every prefix
``k`` lies within ``n_students`` and ``max_length`` within the position table. Types are
strict (``2.0`` is no integer, ``"2"`` no number, ``1`` no boolean). The first failure is one
:class:`CohortFileError` line naming the file, the field, its value and the fix::

    DIR/shoal_meta.json: max_length is -5; it must be an integer from 2 to 8192 or null (the
    token length the cohort was distilled with): correct the file or distil the cohort again
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from shoal.errors import ConfigError, ModelError
from shoal.problems import MULTI, PROBLEM_TYPES
from shoal.problems import check as check_problem
from shoal.types import token_limit

MAX_VOCAB = 1 << 20
"""Token-table rows (XLM-R has 250,002)."""
MAX_WIDTH = 16_384
"""hidden_size and embedding_size (BERT-large is 1,024)."""
MAX_HEADS = 256
MAX_FFN = 65_536
MAX_POSITIONS = 65_536
MAX_LENGTH = 8_192
"""Tokens per input the cohort was distilled with."""
MAX_LABELS = 65_536
MAX_STUDENTS = 128
MAX_LAYERS = 64

FAMILY_NAMES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")
"""``shoal.models.families.FAMILIES`` (the teachers a cohort can come from)."""
ACTIVATION_NAMES = ("gelu", "relu", "tanh", "gelu_new", "gelu_pytorch_tanh")
"""``shoal.models.layers.ACTIVATIONS`` (what the students and heads implement)."""

CONFIG_FIX = "restore the config.json saved with the cohort or distil the cohort again"
META_FIX = "correct the file or distil the cohort again"


class CohortFileError(ModelError):
    """A cohort file holds a value Shoal cannot use; the message is one line naming the file,
    the field, the value and the fix."""

    def __init__(self, file: Path, field: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.field = field


@dataclass(frozen=True)
class Rule:
    """The values a field takes: ``accepts`` decides, ``expect`` says it in words."""

    expect: str
    accepts: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass; 2.0 a float


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _or_null(rule: Rule, null: bool) -> Rule:
    if not null:
        return rule
    return Rule(f"{rule.expect} or null", lambda v: v is None or rule.accepts(v))


def integer(lo: int, hi: int, *, null: bool = False) -> Rule:
    """An integer in ``lo..hi``."""
    return _or_null(
        Rule(f"an integer from {lo} to {hi}", lambda v: _is_int(v) and lo <= v <= hi), null
    )


def number(lo: float, hi: float, *, above: bool = False, below: bool = False) -> Rule:
    """A finite number from ``lo`` (exclusive with ``above``) to ``hi`` (exclusive with
    ``below``); integers count."""
    low = f"above {lo}" if above else f"at least {lo}"
    high = f"below {hi}" if below else f"at most {hi}"
    words = f"a number {low} and {high}" if above or below else f"a number from {lo} to {hi}"

    def accepts(v: Any) -> bool:
        if not _is_number(v):
            return False
        x = float(v)
        return (x > lo if above else x >= lo) and (x < hi if below else x <= hi)

    return Rule(words, accepts)


def choice(options: tuple[str, ...]) -> Rule:
    """One of ``options`` (strings)."""
    return Rule("one of " + ", ".join(repr(o) for o in options), lambda v: v in options)


def boolean() -> Rule:
    return Rule("true or false", lambda v: type(v) is bool)


def text(*, null: bool = False) -> Rule:
    return _or_null(Rule("a string", lambda v: isinstance(v, str)), null)


def strings(max_items: int, *, null: bool = False) -> Rule:
    """A list of at most ``max_items`` strings."""
    return _or_null(
        Rule(
            f"a list of at most {max_items} strings",
            lambda v: (
                isinstance(v, list) and len(v) <= max_items and all(isinstance(x, str) for x in v)
            ),
        ),
        null,
    )


@dataclass(frozen=True)
class Field:
    """One field of a cohort file: its rule, what it means, and its default (``required``:
    none, the file must have it)."""

    rule: Rule
    about: str
    default: Any = None
    required: bool = False


def _buckets(v: Any) -> bool:
    return _is_int(v) and (v == 0 or 4 <= v <= 1024)  # T5 bucketing needs buckets // 4 >= 1


def _class_ids(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and len(v) <= MAX_LABELS
        and all(k.isdecimal() and isinstance(x, str) for k, x in v.items())
    )


CONFIG_FIELDS: dict[str, Field] = {
    "vocab_size": Field(integer(1, MAX_VOCAB), "rows of the token table", required=True),
    "hidden_size": Field(integer(1, MAX_WIDTH), "the students' width", required=True),
    "num_attention_heads": Field(integer(1, MAX_HEADS), "attention heads per layer", required=True),
    "intermediate_size": Field(
        integer(1, MAX_FFN), "the feed-forward width of every layer", required=True
    ),
    "max_position_embeddings": Field(integer(1, MAX_POSITIONS), "rows of the position table", 512),
    "type_vocab_size": Field(integer(0, 1024), "rows of the segment table, 0 for none", 2),
    "layer_norm_eps": Field(number(0, 1, above=True, below=True), "the LayerNorm epsilon", 1e-12),
    "pad_token_id": Field(integer(0, MAX_VOCAB - 1), "the padding token's id", 0),
    "family": Field(choice(FAMILY_NAMES), "the teacher's model_type", "bert"),
    "positions": Field(choice(("absolute", "padded")), "how tokens are numbered", "absolute"),
    "embedding_size": Field(
        integer(1, MAX_WIDTH, null=True), "the embedding width, null for hidden_size", None
    ),
    "relative_attention_num_buckets": Field(
        Rule("0 or an integer from 4 to 1024", _buckets),
        "buckets of the relative position bias, 0 for none",
        0,
    ),
    "hidden_act": Field(choice(ACTIVATION_NAMES), "the students' feed-forward activation", "gelu"),
    "head_activation": Field(choice(ACTIVATION_NAMES), "the head's activation", "tanh"),
    "num_labels": Field(integer(1, MAX_LABELS), "classes the head predicts", 2),
    "id2label": Field(
        Rule("an object of label names (strings) by class id ('0', '1', ...)", _class_ids),
        "label names by class id",
        {},
    ),
    "problem_type": Field(
        choice(PROBLEM_TYPES), "what the head computes", "single_label_classification"
    ),
    "thresholds": Field(
        Rule(
            "a list of probabilities (0 to 1), one per label, or null",
            lambda v: (
                v is None or (isinstance(v, list) and all(_is_number(x) and 0 <= x <= 1 for x in v))
            ),
        ),
        "the probability at which each label of a multi-label head is predicted",
        None,
    ),
    "n_students": Field(integer(1, MAX_STUDENTS), "students in the cohort", 4),
    "student_layers": Field(integer(1, MAX_LAYERS), "transformer layers per student", 2),
    "dropout": Field(number(0, 1, below=True), "the training dropout", 0.1),
    "head_per_student": Field(boolean(), "one head per student instead of a shared one", False),
    "combine": Field(choice(("sum", "mean")), "how the students' outputs add up", "sum"),
    "model_type": Field(choice(("shoal-cohort",)), "what wrote the folder", "shoal-cohort"),
}
"""Every field of ``config.json`` (``ShoalConfig``'s fields, with its defaults)."""

META_FIELDS: dict[str, Field] = {
    "max_length": Field(
        integer(2, MAX_LENGTH, null=True), "the token length the cohort was distilled with"
    ),
    "label_names": Field(strings(MAX_LABELS, null=True), "label names by class id"),
    "prefix_accuracy": Field(
        Rule(
            "a list of objects, one per prefix k",
            lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        ),
        "the stored accuracy of every prefix of the students",
    ),
    "teacher": Field(text(null=True), "the teacher the cohort was distilled from"),
}
"""The fields of ``shoal_meta.json`` that Shoal reads; its other fields (provenance: command,
commit, data, method, train_seconds, init_layers) are kept as written."""

PREFIX_K = Field(integer(1, MAX_STUDENTS), "the number of students of the prefix", required=True)
SCORE_SUFFIXES = ("_accuracy", "_f1", "_disagreement")
"""Prefix-table columns that hold scores (``dev_accuracy``, ``test_micro_f1``, ...); the table's
other columns are kept as written."""
PREFIX_SCORE = Field(_or_null(number(0, 1), True), "a stored score of the prefix, a fraction")
CORRELATION_SUFFIXES = ("_pearson", "_spearman")
PREFIX_CORRELATION = Field(_or_null(number(-1, 1), True), "a stored correlation of the prefix")
ERROR_SUFFIXES = ("_mse",)
PREFIX_ERROR = Field(
    _or_null(number(0, math.inf, below=True), True), "a stored mean squared error of the prefix"
)


def show(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut to ``limit`` characters (one line whatever it holds)."""
    try:
        out = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        out = repr(value)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _fail(file: Path, field: str, value: Any, expect: str, about: str, fix: str) -> NoReturn:
    said = "missing" if value is _MISSING else show(value)
    raise CohortFileError(file, field, f"{field} is {said}; it must be {expect} ({about}): {fix}")


_MISSING = object()


def _check_fields(
    data: Mapping[str, Any], fields: Mapping[str, Field], file: Path, fix: str, prefix: str = ""
) -> None:
    for name, spec in fields.items():
        value = data.get(name, _MISSING)
        if value is _MISSING and not spec.required:
            continue
        if value is _MISSING or not spec.rule.accepts(value):
            _fail(file, prefix + name, value, spec.rule.expect, spec.about, fix)


def check_config(config: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """A validated ``config.json`` with ShoalConfig's defaults filled in.

    Raises:
        CohortFileError: a field has the wrong type or range, a required one is missing, an
            unknown one is present, or two fields disagree.
    """
    _check_fields(config, CONFIG_FIELDS, file, CONFIG_FIX)
    for name in config:
        if name not in CONFIG_FIELDS:
            raise CohortFileError(
                file,
                name,
                f"{name} is {show(config[name])}, but a cohort config (ShoalConfig) has no such "
                f"field: remove it, or {CONFIG_FIX}",
            )
    c = {
        name: config.get(
            name, dict(spec.default) if isinstance(spec.default, dict) else spec.default
        )
        for name, spec in CONFIG_FIELDS.items()
    }
    if c["hidden_size"] % c["num_attention_heads"]:
        _fail(
            file,
            "num_attention_heads",
            c["num_attention_heads"],
            f"a divisor of hidden_size, {c['hidden_size']}",
            "each head takes hidden_size / num_attention_heads dimensions",
            CONFIG_FIX,
        )
    if c["pad_token_id"] >= c["vocab_size"]:
        _fail(
            file,
            "pad_token_id",
            c["pad_token_id"],
            f"below vocab_size, {c['vocab_size']}",
            "the padding token's row of the token table",
            CONFIG_FIX,
        )
    if token_limit(c) < 1:
        _fail(
            file,
            "max_position_embeddings",
            c["max_position_embeddings"],
            f"above pad_token_id + 1, {c['pad_token_id'] + 1}",
            "padded positions are numbered after the pad id",
            CONFIG_FIX,
        )
    ids = [int(k) for k in c["id2label"]]
    if ids and max(ids) >= c["num_labels"]:
        _fail(
            file,
            "id2label",
            c["id2label"],
            f"keyed by class ids below num_labels, {c['num_labels']}",
            "label names by class id",
            CONFIG_FIX,
        )
    try:
        check_problem(c["problem_type"], c["num_labels"])
    except ConfigError as e:
        _fail(
            file, "problem_type", c["problem_type"], f"one that fits num_labels={c['num_labels']}",
            str(e), CONFIG_FIX,
        )  # fmt: skip
    t = c["thresholds"]
    if t is not None and (c["problem_type"] != MULTI or len(t) != c["num_labels"]):
        _fail(
            file,
            "thresholds",
            t,
            f"null, or one per label ({c['num_labels']}) of a {MULTI} head",
            "the probability at which each label is predicted",
            CONFIG_FIX,
        )
    return c


def check_meta(meta: Mapping[str, Any], file: Path) -> None:
    """Check the fields of ``shoal_meta.json`` that need nothing else.

    Raises:
        CohortFileError: a field has the wrong type or range.
    """
    _check_fields(meta, META_FIELDS, file, META_FIX)
    seen: set[int] = set()
    for i, row in enumerate(meta.get("prefix_accuracy") or []):
        where = f"prefix_accuracy[{i}]."
        _check_fields(row, {"k": PREFIX_K}, file, META_FIX, where)
        scores = {
            name: PREFIX_SCORE
            if name.endswith(SCORE_SUFFIXES)
            else PREFIX_CORRELATION
            if name.endswith(CORRELATION_SUFFIXES)
            else PREFIX_ERROR
            for name in row
            if name.endswith(SCORE_SUFFIXES + CORRELATION_SUFFIXES + ERROR_SUFFIXES)
        }
        _check_fields(row, scores, file, META_FIX, where)
        if row["k"] in seen:
            _fail(file, where + "k", row["k"], "unique", "one row per prefix", META_FIX)
        seen.add(row["k"])


def check_pair(config: Mapping[str, Any], meta: Mapping[str, Any], file: Path) -> None:
    """Check ``shoal_meta.json`` (at ``file``) against the checked ``config.json``.

    Raises:
        CohortFileError: a prefix k beyond n_students, or max_length beyond the positions.
    """
    n = config["n_students"]
    for i, row in enumerate(meta.get("prefix_accuracy") or []):
        if row["k"] > n:
            _fail(
                file,
                f"prefix_accuracy[{i}].k",
                row["k"],
                f"at most n_students, {n} in config.json",
                "the number of students of the prefix",
                META_FIX,
            )
    max_length = meta.get("max_length")
    positions = token_limit(dict(config))
    if max_length is not None and max_length > positions:
        _fail(
            file,
            "max_length",
            max_length,
            f"at most {positions}, the positions config.json has",
            META_FIELDS["max_length"].about,
            META_FIX,
        )
