"""Connection hygiene for uvicorn: deadlines for a request's head and body, a cap on open
connections that counts only connections making progress, the head-size and framing checks
h11 leaves out, a check of the file-descriptor limit, and log lines that cannot flood.

uvicorn's h11 protocol closes a connection only when it idles ``timeout_keep_alive`` seconds
*after a response*, and any byte received cancels that timer: a client that connects and sends
nothing, trickles a head, or sends a head and then never its body, holds its socket (and a file
descriptor) forever. ``guarded_protocol`` closes those gaps:

    connect / response sent ──head──> head complete ──body──> body complete ──> the app answers
          └ header_timeout_s: close ┘     └ body_timeout_s: 408, close ┘

A connection in either phase waits on its client; one in neither waits on the server. A new
connection at the cap closes the one that has waited on its client longest without progress
(an idle socket, or an upload whose last body bytes are oldest), so stalled connections can
neither exhaust the descriptors nor lock out a client with a request to send; only with none
stalled does a request get 503. Every connection closed or refused by a limit is counted by
reason (``CLOSE_REASONS``) through the ``on_close`` callback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

FD_RESERVE = 64
"""Descriptors kept for everything but client sockets (model files, worker pipes, logs)."""

CLOSE_REASONS = (
    "header_timeout",
    "body_timeout",
    "evicted",
    "cap",
    "header_too_large",
    "framing",
    "invalid",
)
"""Why a connection was closed or refused: no complete head within ``header_timeout_s``; no
complete body within ``body_timeout_s`` (408); closed at the cap as the longest stalled (503 if
it was mid-upload); refused at the cap with none stalled (503); a head over
``max_header_bytes`` (431); both ``Content-Length`` and ``Transfer-Encoding`` (400); any other
malformed request (400)."""


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """What ``guarded_protocol`` enforces (the ``shoal serve`` flags of the same names)."""

    header_timeout_s: float = 10.0
    """Seconds from connecting, or from the previous response, to a complete request head."""
    body_timeout_s: float = 10.0
    """Seconds from the end of a request head to the end of its body."""
    max_connections: int = 512
    """Most open client connections."""
    max_header_bytes: int = 16_384
    """Most bytes of request line plus headers."""
    retry_after_s: int = 1
    """``Retry-After`` sent with the 503s of the cap."""


_BLANK_LINE = re.compile(rb"\n\r?\n")  # the end of a head, as h11 finds it


class Refused(h11.RemoteProtocolError):
    """A request refused by a check h11 does not make itself; ``reason`` is its metric label."""

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message, error_status_hint=status)
        self.reason = reason


class CheckedConnection(h11.Connection):
    """h11's server side with two checks it leaves out: the head-size limit on a head that
    arrived whole (h11 applies ``max_incomplete_event_size`` only while a head is incomplete),
    and a request framed by both ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 6.3:
    ambiguous, a smuggling vector). ``error`` keeps the last refusal for the answer."""

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            if self.their_state is h11.IDLE:
                self._check_head_size()
            event = super().next_event()
            if isinstance(event, h11.Request):
                names = {name for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    raise Refused(
                        "the request has both Content-Length and Transfer-Encoding, so its "
                        "length is ambiguous; send only one of them",
                        400,
                        "framing",
                    )
            return event
        except h11.RemoteProtocolError as e:
            self.error = e
            raise

    def _check_head_size(self) -> None:
        pending = self.trailing_data[0]
        end = _BLANK_LINE.search(pending)
        size = end.end() if end is not None else len(pending)
        if size > self.max_header_bytes:
            raise Refused(
                f"the request head (request line and headers) has {size} bytes"
                f"{'' if end is not None else ' and counting'}, above "
                f"max_header_bytes={self.max_header_bytes}; send fewer or shorter headers",
                431,
                "header_too_large",
            )


def _error_body(error_type: str, message: str) -> bytes:
    """TEI's error shape, as the app answers."""
    return json.dumps({"error": message, "error_type": error_type}).encode()


_HEAD, _BODY = "head", "body"


def guarded_protocol(
    limits: ConnectionLimits, on_close: Callable[[str], None] | None = None
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with head and body deadlines, the head checks and a connection
    cap; ``on_close(reason)`` is called once per connection closed or refused by a limit."""
    count = on_close or (lambda reason: None)
    cap = limits.max_connections

    class GuardedH11Protocol(H11Protocol):
        _phase: str | None = None
        """_HEAD or _BODY while the connection waits on its client; None: on the server."""
        _stalled_since: float | None = None
        """Loop time of the client's last progress in this phase: the start of the wait for a
        head (a partial head is no progress), else the last body bytes; None with no phase."""
        _timer: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.conn = self._checked = CheckedConnection(limits.max_header_bytes)
            self.limit_concurrency = None  # the cap is applied below: counted, in TEI's shape
            self.app = self._capped(self.app)

        # ---------------------------------------------------------------- uvicorn's hooks

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._follow()
            at_cap = len(self.connections) >= cap
            if at_cap and not self._make_room() and len(self.connections) > cap:
                self._close("cap")  # over the cap with none stalled: no room for this one

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow(progress=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a request h11 refused: the status and reason of the
            refusal, TEI's error shape, then close."""
            error = self._checked.error
            if isinstance(error, Refused):
                status, reason, message = error.error_status_hint, error.reason, str(error)
            elif error is not None and error.error_status_hint == 431:
                status, reason = 431, "header_too_large"
                message = (
                    f"the request head is above max_header_bytes={limits.max_header_bytes}; "
                    "send fewer or shorter headers"
                )
            else:
                status, reason = 400, "invalid"
                message = f"invalid HTTP/1.1 request ({error or msg}); send a well-formed request"
            self._close(reason, (status, "validation", message))

        # ---------------------------------------------------------------- deadlines

        def _follow(self, progress: bool = False) -> None:
            """Arm the deadline of what the connection waits for from its client, if any."""
            state = self.conn.their_state
            if self.transport.is_closing():
                self._stop()
            elif state is h11.IDLE:
                self._enter(_HEAD, limits.header_timeout_s)
            elif state is h11.SEND_BODY:
                self._enter(_BODY, limits.body_timeout_s)
                if progress:
                    self._stalled_since = self.loop.time()
            else:  # the request is in: the server's turn
                self._stop()

        def _enter(self, phase: str, timeout_s: float) -> None:
            if self._phase == phase:
                return  # the deadline runs from the start of the phase
            self._stop()
            self._phase, self._stalled_since = phase, self.loop.time()
            self._timer = self.loop.call_later(timeout_s, self._expire)

        def _stop(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase, self._stalled_since = None, None, None

        def _expire(self) -> None:
            if self._phase == _HEAD:  # no request to answer
                self._close("header_timeout")
                return
            self._close(
                "body_timeout",
                (
                    408,
                    "timeout",
                    f"the request body did not arrive within body_timeout_s="
                    f"{limits.body_timeout_s:g} s of its head; send the body right after the head",
                ),
            )

        # ---------------------------------------------------------------- the cap

        def _make_room(self) -> bool:
            """Close the connection stalled longest (waiting on its client without progress)
            other than this one; False when there is none."""
            stalled = [
                c
                for c in self.connections
                if isinstance(c, GuardedH11Protocol)
                and c is not self
                and c._stalled_since is not None
            ]
            if not stalled:
                return False
            victim = min(stalled, key=lambda c: c._stalled_since or 0.0)
            upload = victim._phase == _BODY  # an idle socket has no request to answer
            answer = self._cap_answer("closed this stalled upload for another connection")
            victim._close("evicted", answer if upload else None)
            return True

        def _cap_answer(self, what: str) -> tuple[int, str, str]:
            return (
                503,
                "overloaded",
                f"the server is at its connection cap (max_connections={cap}) and {what}; "
                f"retry after {limits.retry_after_s} s",
            )

        def _capped(self, app: Any) -> Any:
            """``app`` behind the cap: a request arriving at it gets 503 unless a stalled
            connection can be closed to make room. (Requests in flight need no cap of their
            own: a connection runs one at a time, and a closed one's request is withdrawn.)"""

            async def capped(scope: Any, receive: Any, send: Any) -> None:
                if len(self.connections) < cap or self._make_room():
                    await app(scope, receive, send)
                    return
                count("cap")
                self.logger.warning("Exceeded concurrency limit (max_connections=%d)", cap)
                status, error_type, message = self._cap_answer("every connection is busy")
                body = _error_body(error_type, message)
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(limits.retry_after_s).encode()),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})

            return capped

        # ---------------------------------------------------------------- closing

        def _close(self, reason: str, answer: tuple[int, str, str] | None = None) -> None:
            """Close the connection, answering ``(status, error_type, message)`` first if no
            response has started; count it under ``reason``."""
            self._stop()
            self.connections.discard(self)  # at once: connection_lost comes a loop turn later
            if self.transport.is_closing():
                return
            if answer is not None and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self._write_answer(*answer)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the app's sends are dropped, its receive sees it
                cycle.message_event.set()
            self.transport.close()
            count(reason)

        def _write_answer(self, status: int, error_type: str, message: str) -> None:
            body = _error_body(error_type, message)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            if status == 503:
                headers.append((b"retry-after", str(limits.retry_after_s).encode()))
            try:
                parts = [
                    self.conn.send(
                        h11.Response(
                            status_code=status, headers=headers, reason=STATUS_PHRASES[status]
                        )
                    ),
                    self.conn.send(h11.Data(data=body)),
                    self.conn.send(h11.EndOfMessage()),
                ]
            except h11.LocalProtocolError:  # no answer possible in this state: just close
                return
            self.transport.write(b"".join(p for p in parts if p))

    return GuardedH11Protocol


def fd_limit_warning(
    max_connections: int, workers: int, soft_limit: int | None = None
) -> str | None:
    """A warning when the soft ``RLIMIT_NOFILE`` is too low for ``max_connections`` client
    sockets plus the server's own descriptors, else None."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if soft_limit is None else soft_limit
    need = max_connections + FD_RESERVE + 4 * workers
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    return (
        f"the open-file limit (RLIMIT_NOFILE soft limit {soft}) is below the {need} descriptors "
        f"max_connections={max_connections} needs; connections may fail with 'too many open "
        f"files': raise it (ulimit -n {need}) or lower --max-connections"
    )


class Throttle(logging.Filter):
    """Lets through one record per ``interval_s`` for messages starting with one of
    ``prefixes`` (asyncio's accept errors, the cap's and uvicorn's invalid-request warnings);
    the next one let through says how many were dropped."""

    def __init__(self, prefixes: tuple[str, ...], interval_s: float = 60.0) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        prefix = next((p for p in self.prefixes if text.startswith(p)), None)
        if prefix is None:
            return True
        now = time.monotonic()
        if now - self._last.get(prefix, -self.interval_s) < self.interval_s:
            self._dropped[prefix] = self._dropped.get(prefix, 0) + 1
            return False
        self._last[prefix] = now
        dropped = self._dropped.pop(prefix, 0)
        if dropped:
            record.msg = f"{text} ({dropped} more like it in the last {self.interval_s:g} s)"
        record.exc_info = None  # one line, not a traceback per refused socket
        return True


ACCEPT_ERRORS = (
    "socket.accept() out of system resource",
    "Exceeded concurrency limit",
    "Invalid HTTP request received",
)


def throttle_connection_logs(interval_s: float = 60.0) -> None:
    """Install the ``Throttle`` on the loggers that report refused connections."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Throttle) for f in logger.filters):
            logger.addFilter(Throttle(ACCEPT_ERRORS, interval_s))
