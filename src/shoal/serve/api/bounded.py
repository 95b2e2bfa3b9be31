"""A route that bounds what its JSON body can cost the event loop before FastAPI parses it:
the values counted (413 past what a request may hold), a large body parsed in slices
(``bodyscan``), a string longer than any valid text refused before it is decoded."""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from shoal.serve.api.bodyscan import (
    SMALL_BODY,
    StringTooLong,
    count_json_values,
    loads_in_slices,
    values_allowed,
)
from shoal.serve.api.errors import ApiError
from shoal.serve.api.guard import BODY_KEY

if TYPE_CHECKING:
    from shoal.serve.api.routes import AppContext


class BoundedBodyRoute(APIRoute):
    """A route that counts its JSON body's values before FastAPI parses and validates it, and
    refuses (413) a body holding more than a request of ``max_client_batch_size`` inputs can
    (``bodyscan``): parsing runs on the event loop, so its cost must be bounded first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def bounded(request: Request) -> Response:
            if BODY_KEY in request.scope:  # read by the guard: Starlette would copy it again
                request._body = request.scope[BODY_KEY]
            body = await request.body()
            if body:
                ctx: AppContext = request.app.state.context
                limit = ctx.limits.max_client_batch_size
                allowed = values_allowed(limit)
                if count_json_values(body, stop_after=allowed) > allowed:
                    raise ApiError(413, "validation", _too_many_values(allowed, limit))
                if len(body) > SMALL_BODY and _json_content(request):
                    # parsed here in slices; FastAPI takes Starlette's cached ``request.json()``
                    request._json = await _loads(body, ctx.encoder.max_chars)
            return await handler(request)

        return bounded


def _json_content(request: Request) -> bool:
    """Whether FastAPI parses this request's body as JSON (its strict content-type rule)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _loads(body: bytes, max_chars: int) -> Any:
    """The body's JSON, parsed with the loop let run between its long strings."""
    longest = max_chars * 12  # a character outside the BMP escaped as a surrogate pair
    try:
        return await loads_in_slices(body, longest_string=longest)
    except StringTooLong as e:
        raise ApiError(
            413,
            "validation",
            f"a string in the request body is {e.args[0]} bytes, more than a text of "
            f"max_input_chars={max_chars} characters takes even escaped ({longest}); shorten "
            "it (or raise --max-input-chars)",
        ) from None
    except ValueError as e:  # json.JSONDecodeError, or a number past int's digit limit
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", getattr(e, "pos", 0)), "msg": str(e)}]
        ) from None


def _too_many_values(allowed: int, limit: int) -> str:
    return (
        f"the request body holds more than {allowed} JSON values, more than a request of "
        f"max_client_batch_size={limit} inputs can; send at most {limit} inputs per request "
        "(split the batch, or raise --max-client-batch-size)"
    )
