"""Limits enforced before any route runs, cheapest first: the API key (from the headers
alone), the declared ``Content-Length``, then the body itself, read up to the limit and handed
to the app in one piece (also under ``scope[BODY_KEY]``, so the routes take it as Starlette's
cached body rather than copy it once more). A refused request costs no more memory than its
headers plus what the server has buffered of its body (uvicorn stops reading a connection past
64 KiB).

Every refusal has TEI's error shape. A refusal that leaves body bytes unread closes the
connection, so the rest of the upload is never read.
"""

from __future__ import annotations

import hmac
import io
import json
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_KEY = "shoal.body"
"""Where the guard leaves the whole request body in the ASGI scope."""

PUBLIC_PATHS = frozenset({"/health", "/ping"})
"""Routes answered without the API key (liveness probes); also ``GET /`` and ``HEAD /``, TEI's
health check (``POST /`` classifies and needs the key)."""


@dataclass(frozen=True, kw_only=True)
class GuardLimits:
    api_key: str | None = None
    """If set, every route but ``PUBLIC_PATHS`` needs ``Authorization: Bearer <key>`` (401)."""
    max_body_bytes: int = 1 << 20
    """Most bytes of request body; a larger declared or streamed body gets 413."""


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


async def refuse(
    send: Send,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    close: bool = True,
) -> None:
    """Answer with TEI's error body; ``close`` ends the connection (unread body bytes)."""
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


QUERY_KEY_PATHS = frozenset({"/dashboard", "/dashboard/data"})
"""Routes that also take the key as ``?key=`` (a browser cannot add a header to a page it
opens)."""


def authorized(scope: Scope, api_key: str) -> bool:
    """True when the request carries ``Authorization: Bearer <api_key>`` (constant time), or
    ``?key=<api_key>`` on ``QUERY_KEY_PATHS``."""
    value = _header(scope, b"authorization") or b""
    scheme, _, given = value.partition(b" ")
    ok = hmac.compare_digest(given.strip(), api_key.encode())
    if scheme.lower() == b"bearer" and ok:
        return True
    if scope.get("path") not in QUERY_KEY_PATHS:
        return False
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    return any(hmac.compare_digest(k.encode(), api_key.encode()) for k in query.get("key", []))


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; raises ``_TooLarge`` past ``limit``, ``_Gone`` on disconnect.

    Each message's bytes are appended as they come (``BytesIO`` hands its buffer over without a
    copy at the end), so a body of many MiB is never copied in one piece on the event loop.
    """
    buffer = io.BytesIO()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        if buffer.tell() + len(chunk) > limit:
            raise _TooLarge
        buffer.write(chunk)
        if not message.get("more_body", False):
            return buffer.getvalue()


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then the connection's own messages
    (so a later disconnect is still seen)."""
    sent = False

    async def receive_replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed


class GuardMiddleware:
    """Pure ASGI middleware enforcing ``GuardLimits`` before the app reads anything."""

    def __init__(self, app: ASGIApp, limits: GuardLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key, limit = self.limits.api_key, self.limits.max_body_bytes
        if key is not None and not _public(scope) and not authorized(scope, key):
            await refuse(
                send,
                401,
                "unauthorized",
                "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await refuse(send, 413, "validation", _too_large(limit, int(declared)))
            return
        try:
            body = await read_body(receive, limit)
        except _TooLarge:
            await refuse(send, 413, "validation", _too_large(limit, None))
            return
        except _Gone:  # nobody reads this answer; the status is for the metrics and the log
            await refuse(send, 499, "cancelled", "the client closed the connection mid-upload")
            return
        scope[BODY_KEY] = body
        await self.app(scope, replay(body, receive), send)


def _public(scope: Scope) -> bool:
    path = scope.get("path")
    return path in PUBLIC_PATHS or (path == "/" and scope.get("method") in ("GET", "HEAD"))


def _too_large(limit: int, size: int | None) -> str:
    got = f"{size} bytes" if size is not None else "more"
    return (
        f"the request body has {got}, above max_body_bytes={limit}; send fewer or shorter "
        "texts per request (or raise --max-body-bytes)"
    )
