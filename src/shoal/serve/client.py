"""A small synchronous client for a Shoal server (httpx).

with ShoalClient("http://127.0.0.1:8000") as client:
    client.predict("a great movie")           # [{"label": "positive", "score": 0.97}, ...]
    client.classify(["great", "dull"], min_k=2)["results"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from shoal.errors import ShoalError

PredictInputs = str | Sequence[str] | Sequence[Sequence[str]]
"""A text, a pair ``[a, b]`` or a batch ``[[a], [a, b], ...]`` (TEI's ``/predict`` inputs)."""


class ShoalHTTPError(ShoalError):
    """The server answered with an error: its status, ``error_type`` and message."""

    def __init__(
        self, status: int, error_type: str, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} ({error_type}): {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.retry_after_s = retry_after_s
        """Seconds the server asked to wait (429 and 503), else None."""


class ShoalClient:
    """Talks to ``shoal serve``.

    Args:
        url: base URL of the server.
        api_key: sent as ``Authorization: Bearer <key>`` when given.
        timeout_s: per-request timeout.
        transport: an httpx transport (tests: ``httpx.ASGITransport``-like sync transports).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: talk to the server directly, never via an environment proxy.
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            trust_env=False,
        )

    def predict(
        self,
        inputs: PredictInputs,
        *,
        raw_scores: bool = False,
        truncate: bool | None = None,
        min_k: int | None = None,
        deadline_ms: float | None = None,
    ) -> list[Any]:
        """TEI ``/predict``: labels by score, best first; for a batch, one such list per input."""
        body: dict[str, Any] = {"inputs": _jsonable(inputs), "raw_scores": raw_scores}
        body.update(_present(truncate=truncate, min_k=min_k, deadline_ms=deadline_ms))
        answer: list[Any] = self._post("/predict", body)
        return answer

    def classify(
        self,
        texts: str | Sequence[str],
        text_pairs: Sequence[str] | None = None,
        *,
        min_k: int | None = None,
        deadline_ms: float | None = None,
        truncate: bool | None = None,
    ) -> dict[str, Any]:
        """``/v1/classify``: per text its label, every label's probability and the students
        used; ``min_k`` asks for at least that many students."""
        body: dict[str, Any] = {"texts": [texts] if isinstance(texts, str) else list(texts)}
        if text_pairs is not None:
            body["text_pairs"] = list(text_pairs)
        body.update(_present(min_k=min_k, deadline_ms=deadline_ms, truncate=truncate))
        answer: dict[str, Any] = self._post("/v1/classify", body)
        return answer

    def info(self) -> dict[str, Any]:
        """The model, its students, per-prefix accuracy, current k and the server config."""
        info: dict[str, Any] = self._get("/info").json()
        return info

    def health(self) -> bool:
        """True while the server serves; False when it is draining or unreachable."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        """Prometheus text of ``/metrics``."""
        return self._get("/metrics").text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ShoalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return _checked(self._http.post(path, json=body)).json()

    def _get(self, path: str) -> httpx.Response:
        return _checked(self._http.get(path))


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _jsonable(inputs: PredictInputs) -> Any:
    if isinstance(inputs, str):
        return inputs
    return [x if isinstance(x, str) else list(x) for x in inputs]


def _checked(resp: httpx.Response) -> httpx.Response:
    if resp.status_code < 400:
        return resp
    try:
        body = resp.json()
        error_type, message = str(body["error_type"]), str(body["error"])
    except (ValueError, KeyError, TypeError):
        error_type, message = "unknown", resp.text[:500]
    retry = resp.headers.get("retry-after")
    raise ShoalHTTPError(
        resp.status_code,
        error_type,
        message,
        float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )
