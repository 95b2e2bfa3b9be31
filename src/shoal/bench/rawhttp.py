"""A minimal asyncio HTTP/1.1 client for load generation on the same machine as the server.

httpx's connection pool does more work per request as the number of requests in flight
grows; with hundreds in flight on a small shared host that makes the load generator, not the
server, the bottleneck. :class:`RawHTTPClient` keeps the cost per request flat: one
keep-alive connection per request in flight, taken from a stack of idle ones or newly opened.
"""

from __future__ import annotations

import asyncio
import json as _json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RawResponse:
    """What :class:`RawHTTPClient` read: status, lower-cased headers and the body."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return _json.loads(self.content)


class RawHTTPClient:
    """A minimal HTTP/1.1 keep-alive client for ``POST`` with a JSON body, built on asyncio
    streams, for load generation on the same machine as the server.

    Its cost per request does not grow with the number of requests in flight: an idle
    connection is popped from a stack, or a new one is opened. (httpx's pool does more work
    per request as its connection count grows, and on a shared 2-core host that made the
    load generator, not the server, the bottleneck of the overload runs.) A connection that
    fails, times out or is cancelled mid-request is closed, never reused; a kept-alive one the
    server closed while it was idle is replaced and the request sent on a new one. Responses
    must carry a body delimited by Content-Length, chunking or the connection's close, as
    every JSON answer does. ``http://`` only.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(
                f"the raw client speaks plain http:// to a host, not {base_url!r}; "
                f"use client='httpx' for https"
            )
        self.host, self.port = url.hostname, url.port or 80
        self.prefix = url.path.rstrip("/")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {self.host}:{self.port}\r\n{extra}"
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self._open: set[asyncio.StreamWriter] = set()

    async def post(self, path: str, *, json: Any) -> RawResponse:
        """POST ``json`` (httpx's keyword) to ``path``; the whole response, body read."""
        body = _json.dumps(json).encode()
        request = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        while self._idle:  # reuse a kept-alive connection, unless the server has closed it
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():
                self._drop(writer)
                continue
            try:
                return await self._exchange(reader, writer, request, reused=True)
            except _StaleConnection:
                continue  # closed by the server while idle, before it read this request
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._open.add(writer)
        return await self._exchange(reader, writer, request, reused=False)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        *,
        reused: bool,
    ) -> RawResponse:
        reusable = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                response, reusable = await _read_response(reader)
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
                nothing_read = not isinstance(e, asyncio.IncompleteReadError) or not e.partial
                if reused and nothing_read:
                    raise _StaleConnection from e
                raise
            return response
        finally:
            if reusable:
                self._idle.append((reader, writer))
            else:
                self._drop(writer)

    def _drop(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    async def aclose(self) -> None:
        for writer in self._open:
            writer.close()
        self._open.clear()
        self._idle.clear()


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed; the request was not read."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[RawResponse, bool]:
    """One HTTP/1.1 response; also whether the connection can carry another request."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {status_line!r:.80}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        content = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailer fields, then the empty line that ends the message
        content = b"".join(chunks)
    else:  # delimited by the server closing the connection
        content, keep = await reader.read(), False
    return RawResponse(int(parts[1]), headers, content), keep
