"""``guarded_protocol`` driven byte by byte over a fake transport: the head-size limit on a head
that arrives whole, a request framed twice, the head and body deadlines, which connection the
cap closes, and the 503 when none is stalled; each with the reason it is counted under."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from shoal.errors import ConfigError
from shoal.serve.config import ServeConfig
from shoal.serve.connections import CLOSE_REASONS, ConnectionLimits, guarded_protocol

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FakeTransport:
    """What the protocol writes, and whether it closed; closing reports the loss a loop turn
    later, as asyncio's transports do, then sets ``closed``."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.closed = asyncio.Event()
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self._lost)

    def _lost(self) -> None:
        self.protocol.connection_lost(None)
        self.closed.set()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Server:
    """Protocol instances sharing one uvicorn server state, in front of an app that reads the
    body and answers 200 (``/held``: once ``release`` is set)."""

    def __init__(self, **limits: Any) -> None:
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.disconnects = 0
        self.reasons: list[str] = []
        config = Config(app=self.app, interface="asgi3", lifespan="off", log_config=None, ws="none")
        config.load()
        self.config = config
        self.state = ServerState()
        self.protocol = guarded_protocol(ConnectionLimits(**limits), self.reasons.append)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            if not message.get("more_body", False):
                break
        if scope["path"] == "/held":
            self.held.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def connect(self) -> FakeTransport:
        protocol = self.protocol(
            config=self.config,
            server_state=self.state,
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        transport = FakeTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)  # type: ignore[arg-type]
        return transport

    async def finish(self) -> None:
        """Let every request end, so no task outlives the test."""
        self.release.set()
        with anyio.fail_after(5):
            await asyncio.gather(*self.state.tasks)


def send(transport: FakeTransport, data: bytes) -> None:
    transport.protocol.data_received(data)


def post_head(length: int, path: str = "/") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def status(transport: FakeTransport) -> int | None:
    line = bytes(transport.written).split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line else None


async def test_a_head_over_the_limit_is_refused_whole_or_in_pieces():
    server = Server(max_header_bytes=1024)
    whole = server.connect()
    send(whole, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    pieces = server.connect()
    send(pieces, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 600)
    assert status(pieces) is None
    send(pieces, b"a" * 600)
    for transport in (whole, pieces):
        assert status(transport) == 431 and transport.is_closing()
        assert b"max_header_bytes=1024" in transport.written
    under = server.connect()
    send(under, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 900 + b"\r\n\r\n")
    await server.finish()
    assert status(under) == 200 and not under.is_closing()
    assert server.reasons == ["header_too_large", "header_too_large"]


async def test_content_length_with_chunked_is_refused_and_closed():
    server = Server()
    transport = server.connect()
    send(
        transport,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
    )
    await server.finish()
    assert status(transport) == 400 and transport.is_closing()
    assert b"connection: close" in transport.written.lower()
    assert server.reasons == ["framing"]


async def test_a_malformed_request_is_counted_as_invalid():
    server = Server()
    transport = server.connect()
    send(transport, b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n")
    assert status(transport) == 400 and transport.is_closing()
    assert server.reasons == ["invalid"]


async def test_a_body_past_its_deadline_gets_408_and_the_app_a_disconnect():
    server = Server(body_timeout_s=0.01)
    transport = server.connect()
    send(transport, post_head(10) + b"12345")
    with anyio.fail_after(5):
        await transport.closed.wait()
    await server.finish()
    assert status(transport) == 408 and b"body_timeout_s=0.01" in transport.written
    assert server.disconnects == 1
    assert server.reasons == ["body_timeout"]


async def test_a_head_past_its_deadline_is_closed_unanswered():
    server = Server(header_timeout_s=0.01)
    transport = server.connect()
    send(transport, b"GET / HTTP/1.1\r\nHost")
    with anyio.fail_after(5):
        await transport.closed.wait()
    assert transport.written == b""
    assert server.reasons == ["header_timeout"]


async def test_the_cap_closes_the_connection_stalled_longest():
    server = Server(max_connections=4)
    idle = server.connect()
    upload = server.connect()
    send(upload, post_head(10, "/held"))
    busy = server.connect()
    send(busy, b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")  # the server's turn: never closed
    late_idle = server.connect()  # at the cap: the idle one has waited longest
    assert idle.is_closing() and idle.written == b""
    send(upload, b"123")  # progress: now the late idle one has waited longest
    newest = server.connect()
    assert late_idle.is_closing() and not upload.is_closing()
    server.connect()  # the upload's last bytes are older than the newest connection
    assert upload.is_closing() and status(upload) == 503
    assert b"retry-after: 1" in upload.written.lower()
    assert not busy.is_closing() and not newest.is_closing()
    assert server.reasons == ["evicted", "evicted", "evicted"]
    await server.finish()
    assert status(busy) == 200


async def test_with_none_stalled_a_request_at_the_cap_gets_503():
    server = Server(max_connections=2)
    busy = server.connect()
    send(busy, b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
    with anyio.fail_after(5):
        await server.held.wait()  # admitted: below the cap
    late = server.connect()  # at the cap, kept: its request is answered 503
    send(late, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with anyio.fail_after(5):
        await late.closed.wait()
    assert status(late) == 503 and b"max_connections=2" in late.written
    assert b"retry-after: 1" in late.written.lower()
    kept = server.connect()
    send(kept, b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    over = server.connect()  # one over the cap with none stalled: closed at once
    assert over.is_closing() and over.written == b"" and not kept.is_closing()
    await server.finish()
    assert status(busy) == 200
    assert server.reasons == ["cap", "cap", "cap"]  # late, over, then kept's request
    assert set(server.reasons) <= set(CLOSE_REASONS)


def test_the_body_timeout_must_be_positive():
    assert ServeConfig().body_timeout_s > 0
    with pytest.raises(ConfigError, match="body_timeout_s=0"):
        ServeConfig(body_timeout_s=0)
