"""A real server against clients that send a request head and then a slow body or none: 600
such uploads under the default connection cap while a normal client is answered, a body that
misses ``--body-timeout-s``, a head over ``max_header_bytes`` in one write, and a request
framed by both ``Content-Length`` and ``Transfer-Encoding``; each closed connection is counted
in ``shoal_connections_closed_total``."""

from __future__ import annotations

import contextlib
import re
import resource
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from shoal.serve.config import ServeConfig

SLOW_UPLOADS = 600
CAP = ServeConfig().max_connections
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def default_server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def patient_server(start_server):
    """The default cap, and a body deadline no upload here reaches: only the cap can make
    room."""
    return start_server("--body-timeout-s", "120")


@pytest.fixture(scope="module")
def quick_bodies(start_server):
    return start_server("--body-timeout-s", str(BODY_TIMEOUT_S))


def post_head(length: int) -> bytes:
    return (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def closed_by_reason(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    pattern = r'^shoal_connections_closed_total\{reason="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection, and whether it did within
    ``timeout_s``."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _unread_bytes(port: int) -> int | None:
    """Connections waiting in the server's accept queue plus bytes it has not read from its
    accepted sockets on ``port`` (Linux's /proc/net/tcp); None elsewhere."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        return None
    unread = 0
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] in ("0A", "01"):  # listening, established
            unread += int(fields[4].split(":")[1], 16)
    return unread


def wait_until_read(port: int, timeout_s: float) -> None:
    """Wait until the server has accepted every connection and read every byte sent to it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        unread = _unread_bytes(port)
        if unread is None:
            pytest.skip("needs /proc/net/tcp to see what the server has read")
        if unread == 0:
            return
        time.sleep(0.05)  # the kernel's queues: no event to wait on
    raise AssertionError(f"the server left data unread for {timeout_s} s")


@pytest.fixture
def many_sockets():
    """This process may open ``SLOW_UPLOADS`` sockets and more (soft limit raised to hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SLOW_UPLOADS + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the open-file hard limit {hard} is below the {need} this test needs")
    raised = max(soft, need) if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_uploads_that_never_send_their_body_do_not_lock_clients_out(patient_server, many_sockets):
    server = patient_server
    started = time.monotonic()
    uploads: list[socket.socket] = []
    try:
        for _ in range(SLOW_UPLOADS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            uploads.append(sock)
            with contextlib.suppress(OSError):  # closed already, to make room for a later one
                sock.sendall(post_head(1000))  # and never the 1000 bytes
        wait_until_read(server.port, 20)
        t0 = time.monotonic()
        with httpx.Client(base_url=server.url, trust_env=False, timeout=5) as client:
            health = client.get("/health")
            answer = client.post("/predict", json={"inputs": "a client with a request"})
        elapsed = time.monotonic() - t0
        closed = closed_by_reason(server.url)
        assert health.status_code == 200, health.text
        assert answer.status_code == 200, answer.text
        assert elapsed < 5, elapsed
        # every upload beyond the cap displaced the one stalled longest
        assert closed["evicted"] >= SLOW_UPLOADS - CAP, closed
        assert closed["cap"] == 0 and closed["body_timeout"] == 0, closed
        data, was_closed = read_until_closed(uploads[0], 1)  # the one stalled longest
        assert was_closed and data[:12] in (b"", b"HTTP/1.1 503"), data[:300]
    finally:
        for sock in uploads:
            sock.close()
    assert time.monotonic() - started < 30


def test_a_body_slower_than_the_body_timeout_gets_408_and_is_closed(quick_bodies):
    with socket.create_connection(("127.0.0.1", quick_bodies.port), timeout=5) as sock:
        sock.sendall(post_head(1000))
        started = time.monotonic()
        for _ in range(100):  # one byte per 0.1 s: progress, but 1000 bytes take 100 s
            if select.select([sock], [], [], 0.1)[0]:
                break
            try:
                sock.sendall(b" ")
            except OSError:
                break
        elapsed = time.monotonic() - started
        data, closed = read_until_closed(sock, 5)
    assert closed and data.startswith(b"HTTP/1.1 408"), data[:300]
    assert b"body_timeout_s=1" in data and b'"error_type":"timeout"' in data.replace(b" ", b"")
    assert BODY_TIMEOUT_S - 0.3 < elapsed < BODY_TIMEOUT_S + 4, elapsed
    assert closed_by_reason(quick_bodies.url)["body_timeout"] >= 1
    # a body sent in pieces that all arrive in time is answered
    body = b'{"inputs": "a good movie"}'
    with socket.create_connection(("127.0.0.1", quick_bodies.port), timeout=5) as sock:
        sock.sendall(post_head(len(body)) + body[:10])
        time.sleep(BODY_TIMEOUT_S / 4)  # the client's pacing
        sock.sendall(body[10:])
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_a_head_over_the_limit_in_one_write_is_refused_and_closed(default_server):
    limit = ServeConfig().max_header_bytes
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n"
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=5) as sock:
        sock.sendall(head % (b"a" * (limit + 4000)))
        data, closed = read_until_closed(sock, 5)
    assert closed and data.startswith(b"HTTP/1.1 431"), data[:300]
    assert f"max_header_bytes={limit}".encode() in data
    assert closed_by_reason(default_server.url)["header_too_large"] >= 1
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=5) as sock:
        sock.sendall(head % (b"a" * (limit - 1000)))  # under the limit: answered
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_both_content_length_and_chunked_is_refused_and_closed(default_server):
    body = b'{"inputs": "a good movie"}'
    request = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(body), len(body), body)
    )
    with socket.create_connection(("127.0.0.1", default_server.port), timeout=5) as sock:
        sock.sendall(request)
        data, closed = read_until_closed(sock, 5)
    assert data.startswith(b"HTTP/1.1 400"), data[:300]
    assert closed, "the connection stayed open after the answer"
    assert b"Content-Length and Transfer-Encoding" in data
    assert closed_by_reason(default_server.url)["framing"] >= 1
