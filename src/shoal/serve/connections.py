"""Connection hygiene for uvicorn: a header deadline, a cap on open connections, a check of the
file-descriptor limit, and log lines that cannot flood.

uvicorn's h11 protocol closes a connection only when it idles ``timeout_keep_alive`` seconds
*after a response*, and any byte received cancels that timer: a client that connects and sends
nothing, or trickles a header one byte at a time, holds its socket (and a file descriptor)
forever. ``guarded_protocol`` adds the smallest guard that closes that gap: a connection must
deliver a complete request head within ``header_timeout_s`` of connecting (or of its previous
response), and a new connection at the cap closes the longest-waiting idle one, so idle sockets
can neither exhaust the descriptors nor lock out a client with a request to send.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

FD_RESERVE = 64
"""Descriptors kept for everything but client sockets (model files, worker pipes, logs)."""


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request-head deadline and a connection cap."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_since: float | None = None
        """Loop time since which the connection waits for a request head; None: in a request."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._wait_for_head()
            if len(self.connections) >= max_connections:
                self._make_room()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in: no deadline now
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._wait_for_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _wait_for_head(self) -> None:
            self._stop_waiting()
            self._waiting_since = self.loop.time()
            self._header_timer = self.loop.call_later(header_timeout_s, self._drop)

        def _stop_waiting(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer, self._waiting_since = None, None

        def _drop(self) -> None:
            """Close without an answer (the client has sent no complete request)."""
            self._stop_waiting()
            self.connections.discard(self)
            if not self.transport.is_closing():
                self.transport.close()

        def _make_room(self) -> None:
            """Close the longest-waiting idle connection; with none idle and the cap exceeded,
            this one."""
            idle = [
                c
                for c in self.connections
                if c is not self and getattr(c, "_waiting_since", None) is not None
            ]
            if idle:
                min(idle, key=lambda c: c._waiting_since)._drop()
            elif len(self.connections) > max_connections:
                self._drop()

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
    ``prefixes`` (asyncio's accept errors, uvicorn's concurrency-limit warning); the next one
    let through says how many were dropped."""

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


ACCEPT_ERRORS = ("socket.accept() out of system resource", "Exceeded concurrency limit")


def throttle_connection_logs(interval_s: float = 60.0) -> None:
    """Install the ``Throttle`` on the loggers that report refused connections."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Throttle) for f in logger.filters):
            logger.addFilter(Throttle(ACCEPT_ERRORS, interval_s))
