"""Request and response bodies. ``/predict`` follows Hugging Face text-embeddings-inference
(TEI); ``/v1/classify`` is Shoal's richer form. Plain pydantic models: they also make the
OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError


def _not_blank(text: str) -> str:
    # In Python, not as ``Field(min_length=1, pattern=...)``: those make pydantic-core count
    # the characters of a copy of every text in UTF-8, milliseconds on the event loop for a
    # batch of long texts outside ASCII; ``isspace`` stops at the first visible character.
    if not text or text.isspace():
        raise PydanticCustomError("string_pattern_mismatch", "the text is empty or blank")
    return text


Text = Annotated[
    str,
    AfterValidator(_not_blank),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": r"\S"}),
]
"""A text to classify: not empty, not only whitespace (the encoder also refuses text made only
of invisible characters such as NUL or zero-width spaces)."""
Direction = Literal["left", "right", "Left", "Right"]
"""TEI writes ``Left``/``Right`` in its schema and ``right`` as the default; both are taken."""


class _Body(BaseModel):
    # Unknown fields are refused so that a typo ("raw_score") is an error, not silently ignored;
    # strict, so that 0 is not taken for false nor "5" for 5.
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictParameters(_Body):
    """The Hugging Face Inference API's text-classification ``parameters``."""

    top_k: int | None = Field(None, ge=1, description="Return only the k best labels.")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None,
        description="Scores as softmax probabilities, per-label sigmoids of the "
        "logits, or the logits themselves ('none'); unset: the head's own (softmax for a "
        "single-label head, sigmoid for a multi-label one, none for regression).",
    )


class PredictRequest(_Body):
    """TEI ``/predict``: a text, a pair ``[a, b]`` or a batch ``[[a], [a, b], ...]``, with the
    Inference API's optional ``parameters``."""

    inputs: Text | list[Text] | list[list[Text]] = Field(
        description="A text, a pair of texts [a, b], or a batch of [text] / [text, pair] lists.",
        examples=["a great movie"],
    )
    raw_scores: bool = Field(False, description="Return logits instead of probabilities.")
    parameters: PredictParameters | None = Field(
        None, description="Hugging Face Inference API options: top_k, function_to_apply."
    )
    truncate: bool | None = Field(
        None,
        description="Truncate inputs longer than the model's max length; null uses the "
        "server's setting, false refuses them with 413.",
    )
    truncation_direction: Direction = Field("right", description="Which end to cut.")
    min_k: int | None = Field(None, ge=1, description="Shoal extension: fewest students to use.")
    deadline_ms: float | None = Field(
        None,
        ge=1,
        le=3_600_000,
        description="Shoal extension: start within this many ms "
        "or fail with 408; null uses the server's default.",
    )


class LabelScore(BaseModel):
    """One class and its score (probability, or logit with ``raw_scores``)."""

    label: str
    score: float


class ClassifyRequest(_Body):
    """Shoal's ``/v1/classify``: texts (and optional second texts for pair tasks)."""

    texts: list[Text] = Field(
        min_length=1,
        description="Texts to classify.",
        examples=[["a great movie", "dull and slow"]],
    )
    text_pairs: list[Text] | None = Field(
        None, description="Second texts for sentence-pair tasks, one per text."
    )
    min_k: int | None = Field(
        None,
        ge=1,
        description="Fewest students to use for these texts "
        "(higher is more accurate, slower under load).",
    )
    deadline_ms: float | None = Field(
        None,
        ge=1,
        le=3_600_000,
        description="Start within this many ms or fail with 408; null uses the server default.",
    )
    truncate: bool | None = Field(
        None, description="Truncate over-long inputs; null uses the server's setting."
    )
    truncation_direction: Direction = "right"


class ClassifyResult(BaseModel):
    """The answer for one text."""

    label: str = Field(description="The best-scoring label.")
    label_id: int
    labels: list[str] | None = Field(
        None,
        description="Multi-label heads: every label whose probability reaches its threshold "
        "(the cohort's, in /info), best first; absent for other heads.",
    )
    scores: dict[str, float] = Field(
        description="Every label's score: softmax probability, sigmoid probability "
        "(multi-label) or the value (regression)."
    )
    logits: list[float]
    students_used: int
    truncated: bool


class ClassifyResponse(BaseModel):
    model: str
    n_students: int = Field(description="Students in the cohort.")
    students_used: int = Field(description="Fewest students used for any of the texts.")
    queue_time_ms: float
    inference_time_ms: float
    results: list[ClassifyResult]


class ErrorResponse(BaseModel):
    """TEI's error shape: what went wrong and how to fix it, and a machine-readable kind."""

    error: str
    error_type: str = Field(
        examples=["validation", "overloaded", "timeout", "unavailable", "unauthorized", "backend"]
    )


class Health(BaseModel):
    status: str
    active_students: int


class Info(BaseModel):
    """TEI's ``Info`` fields (``model_id`` to ``docker_label``), then the cohort's."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, dict[str, dict[str, Any]]] = Field(
        description='TEI\'s {"classifier": {"id2label": {...}, "label2id": {...}}}.'
    )
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    sha: str | None
    docker_label: str | None
    format: str = Field(description="shoal-cohort")
    version: str
    labels: list[str]
    problem_type: str = Field(
        description="What the head computes: single_label_classification (softmax scores, "
        "the default), multi_label_classification (a sigmoid per label) or regression (the "
        "value)."
    )
    thresholds: list[float] | None = Field(
        None,
        description="Multi-label heads: the probability at which each label counts as "
        "predicted, fitted on dev when the cohort was distilled (null: 0.5 each).",
    )
    n_students: int
    student_layers: int
    current_k: int
    cost_scale: float
    queue_depth: int
    prefix_accuracy: list[dict[str, Any]]
    config: dict[str, Any]


Inputs = list[tuple[str, str | None]]


def parse_predict_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[Inputs, bool]:
    """``(text, pair)`` per input and whether the request was a batch.

    Raises ``ValueError`` naming the problem and the accepted shapes.
    """
    shapes = 'send "text", ["text", "pair"] or a batch [["text"], ["text", "pair"], ...]'
    if isinstance(inputs, str):
        return [(inputs, None)], False
    if not inputs:
        raise ValueError(f"inputs is empty; {shapes}")
    if all(isinstance(x, str) for x in inputs):
        flat: list[str] = inputs  # type: ignore[assignment]
        if len(flat) == 1:
            return [(flat[0], None)], False
        if len(flat) == 2:
            return [(flat[0], flat[1])], False
        raise ValueError(
            f"inputs is a list of {len(flat)} strings, but a pair has exactly 2; "
            f"for a batch {shapes}"
        )
    out: Inputs = []
    for i, x in enumerate(inputs):
        if not isinstance(x, list) or not 1 <= len(x) <= 2:
            size = len(x) if isinstance(x, list) else "not a list"
            raise ValueError(
                f"inputs[{i}] has {size} texts; each batch entry is [text] or [text, pair]"
            )
        out.append((x[0], x[1] if len(x) == 2 else None))
    return out, True


def parse_classify_inputs(body: ClassifyRequest) -> Inputs:
    """``(text, pair)`` per text; raises ``ValueError`` when the pairs do not line up."""
    if body.text_pairs is None:
        return [(t, None) for t in body.texts]
    if len(body.text_pairs) != len(body.texts):
        raise ValueError(
            f"text_pairs has {len(body.text_pairs)} entries but texts has "
            f"{len(body.texts)}; send one pair per text or leave text_pairs out"
        )
    return list(zip(body.texts, body.text_pairs, strict=True))
