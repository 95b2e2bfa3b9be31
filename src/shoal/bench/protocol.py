"""The request and answer shapes the load generator speaks: TEI's ``POST /predict`` (Shoal
and the teacher baselines) and Infinity's ``POST /classify``.

Kept apart from the sending so the capacity probe and the tests can build the same bodies
and read the same answers as the open-loop run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.bench.workload import Request

APIS = ("tei", "infinity")
"""Request shapes the generator speaks: TEI's ``POST /predict`` (Shoal and the teacher
baselines) or Infinity's ``POST /classify``."""


def label_index(label: str, labels: Sequence[str]) -> int | None:
    """Class index of a returned label: a label name, ``"3"`` or HF-style ``"LABEL_3"``."""
    if label in labels:
        return list(labels).index(label)
    m = re.fullmatch(r"(?:LABEL_)?(\d+)", label.strip())
    if m is not None and int(m.group(1)) < max(len(labels), 1):
        return int(m.group(1))
    return None


def request_body(req: Request, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """TEI ``/predict`` body: a single text, or a two-item list for a sentence pair."""
    inputs: str | list[str] = req.text if req.text_pair is None else [req.text, req.text_pair]
    return {**(extra or {}), "inputs": inputs}


def request_for(api: str, req: Request, extra: Mapping[str, Any] | None = None) -> tuple[str, Any]:
    """The path and JSON body that ask ``api`` to classify one request."""
    if api == "infinity":
        if req.text_pair is not None:
            raise ValueError("Infinity's /classify takes single texts, not pairs")
        return "/classify", {**(extra or {}), "input": [req.text]}
    return "/predict", request_body(req, extra)


def answer_label(api: str, payload: Any) -> str:
    """The top label of one answer: TEI's list of ``{label, score}``, or Infinity's
    ``{"data": [[{label, score}, ...]]}``."""
    if api == "infinity":
        return top_label(payload["data"][0])
    return top_label(payload)


def top_label(payload: Any) -> str:
    """The highest-scoring label of a ``/predict`` answer (``[{"label", "score"}, ...]``,
    also accepted wrapped in one more list as TEI does for batched inputs)."""
    if isinstance(payload, list) and payload and isinstance(payload[0], list):
        payload = payload[0]
    if not isinstance(payload, list) or not payload:
        raise ValueError(f"expected a non-empty list of {{label, score}}, got {payload!r:.200}")
    best = max(payload, key=lambda p: float(p["score"]))
    return str(best["label"])


def timing_headers(headers: Mapping[str, str]) -> tuple[float | None, float | None, int | None]:
    """Shoal's per-request timing headers: queue ms, inference ms and students used (None
    for each one a server does not send)."""
    return (
        _float_header(headers, "x-queue-time"),
        _float_header(headers, "x-inference-time"),
        _int_header(headers, "x-students-used"),
    )


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = _float_header(headers, name)
    return None if value is None else int(value)
