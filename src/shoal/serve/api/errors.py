"""Every failure as TEI's error body ``{"error": ..., "error_type": ...}`` with the right status.

The message names the problem and the fix; ``error_type`` is one of: validation, overloaded,
unavailable, timeout, unauthorized, not_found, backend (and cancelled, for a client that left).
The serving errors (``shoal.serve.errors``) carry their own status and type; this module only
shapes them, and FastAPI's own errors, into the body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shoal.errors import ShoalError
from shoal.serve.api.observe import internal_error_message
from shoal.serve.errors import ServingError

log = logging.getLogger("shoal.serve.api")


class ApiError(ShoalError):
    """An HTTP error raised by a route."""

    def __init__(
        self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.headers = headers or {}


def error_response(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": message, "error_type": error_type}, status_code=status, headers=headers
    )


def as_api_error(exc: Exception, retry_after_s: int = 1) -> ApiError:
    """The HTTP form of an error: a serving error's own status, type and message (with
    ``Retry-After`` where the same request may succeed later); anything else is a 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ServingError):
        headers = {"Retry-After": str(retry_after_s)} if exc.retry_after else None
        return ApiError(exc.status, exc.error_type, exc.public_message(retry_after_s), headers)
    return ApiError(500, "backend", f"unexpected error: {exc!r}")


_TYPE_ERRORS = {
    "string_type",
    "list_type",
    "int_type",
    "int_parsing",
    "float_type",
    "float_parsing",
    "bool_type",
    "bool_parsing",
    "dict_type",
    "model_type",
}
_HINTS = {
    "inputs": 'send "text", ["text", "pair"] or a batch [["text"], ["text", "pair"]]',
    "texts": 'send a list of texts, e.g. ["a great movie"]',
}


def _field(loc: tuple[Any, ...]) -> str:
    # pydantic adds the union member tried ("list[constrained-str]") to the location: drop it.
    parts = [
        str(x)
        for x in loc
        if x != "body"
        and not (
            isinstance(x, str) and ("[" in x or "-" in x or x in ("str", "int", "float", "bool"))
        )
    ]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> str:
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            return (
                "the request body is not valid JSON; send a JSON object such as "
                '{"inputs": "a great movie"}'
            )
        if err.get("type") == "missing" and _field(err.get("loc", ())) == "body":
            return (
                "the request body is missing; send a JSON object such as "
                '{"inputs": "a great movie"} with Content-Type: application/json'
            )
    # A failed union reports every member; the errors that are not plain type mismatches say
    # what is actually wrong.
    specific = [e for e in errors if e.get("type") not in _TYPE_ERRORS] or errors
    parts = []
    for err in specific:
        field, kind = _field(err.get("loc", ())), err.get("type", "")
        top = field.split(".")[0]
        if field == "body" and kind in ("model_attributes_type", "dict_type", "model_type"):
            parts.append(
                'the body must be a JSON object such as {"inputs": "a great movie"}, '
                "sent with Content-Type: application/json"
            )
        elif kind in ("string_pattern_mismatch", "string_too_short"):
            parts.append(f"{field}: the text is empty or blank; send non-empty text")
        elif kind == "extra_forbidden":
            parts.append(f"{field}: unknown field; remove it (see GET /docs for the fields)")
        elif kind in _TYPE_ERRORS and top in _HINTS:
            parts.append(f"{top}: wrong type; {_HINTS[top]}")
        else:
            parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(list(dict.fromkeys(parts))[:4])


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the TEI error shape."""

    @app.exception_handler(ShoalError)
    async def _shoal(request: Request, exc: ShoalError) -> JSONResponse:
        err = as_api_error(exc)
        if err.status == 500:  # the details (paths, pids, cores) go to the log only
            rid = str(getattr(request.state, "request_id", "-"))
            cause = exc.__cause__ or exc
            log.error("request_id=%s %s %s: %s", rid, request.method, request.url.path, cause)
            return error_response(err.status, err.error_type, internal_error_message(rid))
        return error_response(err.status, err.error_type, str(err), err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {401: "unauthorized", 404: "not_found", 405: "validation"}.get(
            exc.status_code, "validation" if exc.status_code < 500 else "backend"
        )
        msg = str(exc.detail)
        if exc.status_code == 400:  # FastAPI could not decode the body
            msg = (
                "the request body could not be read; send UTF-8 JSON such as "
                '{"inputs": "a great movie"} with Content-Type: application/json'
            )
        elif exc.status_code == 404:
            msg = (
                f"no route {request.url.path}; the routes are /predict, /v1/classify, "
                "/health, /info, /metrics, /docs, /dashboard, for Hugging Face and SageMaker "
                "clients POST /, /invocations and /ping, for vLLM-style clients /classify and "
                "/v1/models, and TEI's /tokenize"
            )
        elif exc.status_code == 405:
            msg = (
                f"{request.method} is not allowed on {request.url.path}; see GET /docs for "
                "the methods each route takes"
            )
        return error_response(exc.status_code, kind, msg, dict(exc.headers or {}))
