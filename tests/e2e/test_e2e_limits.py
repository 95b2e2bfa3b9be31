"""A real server under hostile or unusual clients, on loopback: unauthenticated uploads refused
without reading them, oversized bodies, idle sockets beyond the descriptor limit, the Hugging
Face client, a key that never shows in ``ps``, a worker that cannot restart, damaged files."""

from __future__ import annotations

import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess

KEY = "limits-k3y"
AUTH = {"authorization": f"Bearer {KEY}"}
FD_LIMIT = 1024
IDLE_SOCKETS = 1100
HEADER_TIMEOUT_S = 2.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(scope="module")
def limited(e2e_cohort, profile_cache, tmp_path_factory):
    """A server under ``ulimit -n 1024`` whose key comes from the environment."""
    log = tmp_path_factory.mktemp("limited") / "server.log"
    server = ServerProcess(
        e2e_cohort,
        log,
        "--profile-cache",
        str(profile_cache),
        "--max-body-bytes",
        "100000",
        "--max-connections",
        "900",
        "--header-timeout-s",
        str(HEADER_TIMEOUT_S),
        env={"SHOAL_API_KEY": KEY},
        preexec_fn=limit_fds,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.terminate()


def post_unauthenticated(url: str, size: int, chunked: bool) -> tuple[bytes, int]:
    """Start a ``size``-byte upload without a key; the answer's first bytes and how many body
    bytes the server let through before closing."""
    port = int(url.rsplit(":", 1)[1])
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n"
    head += "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode())
        answer = s.recv(4096)
        chunk = b"x" * (1 << 20)
        if chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sent = 0
        try:
            while sent < size:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset, broken pipe or a full window: the server stopped reading
            pass
    return answer, sent


def test_unauthenticated_uploads_are_refused_unread(limited):
    with httpx.Client(base_url=limited.url, headers=AUTH, trust_env=False, timeout=30) as c:
        assert c.post("/predict", json={"inputs": "warm up"}).status_code == 200
    before = rss_mb(limited.proc.pid)
    size = 50 << 20
    for i in range(4):
        answer, sent = post_unauthenticated(limited.url, size, chunked=i % 2 == 1)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert sent < size  # the connection was closed, not drained
    assert rss_mb(limited.proc.pid) - before < 50
    with httpx.Client(base_url=limited.url, headers=AUTH, trust_env=False, timeout=30) as c:
        big = c.post("/predict", json={"inputs": "good " * 30_000})
        ok = c.post("/predict", json={"inputs": "still serving"})
    assert big.status_code == 413 and "max_body_bytes=100000" in big.json()["error"]
    assert ok.status_code == 200


def test_idle_sockets_beyond_the_fd_limit_do_not_lock_clients_out(limited):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < IDLE_SOCKETS + 200:
        pytest.skip(f"this process may open {hard} files, fewer than {IDLE_SOCKETS} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE_SOCKETS + 200), hard))
    port = limited.port
    idle: list[socket.socket] = []
    started = time.monotonic()
    try:
        for _ in range(IDLE_SOCKETS):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        with httpx.Client(base_url=limited.url, headers=AUTH, trust_env=False, timeout=10) as c:
            resp = c.post("/predict", json={"inputs": "a client with a request"})
        assert resp.status_code == 200, resp.text
        open_left = _wait_all_closed(idle, HEADER_TIMEOUT_S + 20)
        assert open_left == 0, f"{open_left} idle sockets still open"
    finally:
        for s in idle:
            s.close()
    assert time.monotonic() - started < 40
    accept_errors = limited.output().count("out of system resource")
    assert accept_errors <= 1, limited.output()[-3000:]


def test_a_trickled_request_head_is_cut_at_the_header_timeout(limited):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as s:
        closed = False
        for byte in head:  # one byte per 0.2 s: each would reset uvicorn's own timer
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if _wait_all_closed([s], 0.2) == 0:
                closed = True
                break
    elapsed = time.monotonic() - started
    assert closed and HEADER_TIMEOUT_S - 0.5 < elapsed < HEADER_TIMEOUT_S + 5, elapsed


def _wait_all_closed(socks: list[socket.socket], timeout_s: float) -> int:
    """Wait until the server has closed every socket (EOF or reset); how many stay open."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    left = len(socks)
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(1024)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                left -= 1
    sel.close()
    return left


def test_the_key_from_the_environment_never_shows_in_ps(limited):
    cmdline = Path(f"/proc/{limited.proc.pid}/cmdline").read_bytes()
    assert KEY.encode() not in cmdline
    with httpx.Client(base_url=limited.url, trust_env=False, timeout=30) as c:
        assert c.get("/info").status_code == 401
        assert c.get("/docs").status_code == 401
        assert c.get("/info", headers=AUTH).json()["config"]["api_key"] == "***"
        assert c.head("/health").status_code == 200
        assert c.get("/ping").status_code == 200


def test_hugging_face_inference_client_works_unchanged(limited, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # Offline mode (set for the test suite) refuses every request, loopback included.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(limited.url, token=KEY)
    out = client.text_classification("a good movie")
    assert sorted(x.label for x in out) == ["negative", "positive"]
    assert out[0].score >= out[1].score and abs(sum(x.score for x in out) - 1) < 1e-4
    top = client.text_classification("a good movie", top_k=1, function_to_apply="sigmoid")
    assert len(top) == 1 and top[0].label == out[0].label and 0 < top[0].score < 1


def test_a_vllm_style_client_works_unchanged(limited):
    # what vLLM's own classify example does: the model from /v1/models, then /classify
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=limited.url, headers=headers, trust_env=False, timeout=30) as c:
        model = c.get("/v1/models").json()["data"][0]["id"]
        prompts = ["a good movie", "a dull and slow plot"]
        answer = c.post("/classify", json={"model": model, "input": prompts}).json()
        tokens = c.post("/tokenize", json={"inputs": prompts[0]}).json()
    assert answer["model"] == model and [d["index"] for d in answer["data"]] == [0, 1]
    for row in answer["data"]:
        assert row["label"] in ("negative", "positive") and row["num_classes"] == 2
        assert abs(sum(row["probs"]) - 1) < 1e-4
    assert answer["usage"]["prompt_tokens"] > 0
    assert [t["special"] for t in tokens[0]][:1] == [True]


# ------------------------------------------------------------------------------ failures


def _worker_pids(server_pid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(entry.name))
    return pids


def _metric(text: str, name: str) -> float:
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name))


def test_a_worker_that_cannot_restart_fails_health_with_backoff(
    e2e_cohort, profile_cache, tmp_path
):
    cohort = tmp_path / "cohort"
    shutil.copytree(e2e_cohort, cohort)
    server = ServerProcess(
        cohort, tmp_path / "server.log", "--profile-cache", str(profile_cache), "--workers", "1"
    )
    try:
        server.wait_ready()
        (pid,) = _worker_pids(server.proc.pid)
        (cohort / "model.safetensors").unlink()
        os.kill(pid, signal.SIGKILL)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as c:
            deadline = time.monotonic() + 60
            while c.get("/health").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)  # the restart's spawn takes seconds: nothing to wait on
            health = c.get("/health")
            assert health.status_code == 503, health.text
            assert "worker processes are down" in health.json()["error"]
            t0 = time.monotonic()
            statuses = []
            while time.monotonic() - t0 < 6:
                resp = c.post("/predict", json={"inputs": "good"})
                statuses.append(resp.status_code)
                # the pid as a number of its own: it may also occur inside the hex request id
                assert str(cohort) not in resp.text and not re.search(rf"\b{pid}\b", resp.text)
            metrics = c.get("/metrics").text
        assert set(statuses) == {500} and len(statuses) >= 5, statuses
        assert _metric(metrics, "shoal_workers_alive") == 0
        assert 1 <= _metric(metrics, "shoal_worker_restarts_total") <= 5, metrics
    finally:
        if server.proc.poll() is None:
            server.terminate()


def _serve_fails(cohort: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.serve.server", str(cohort), "--port", "9", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return proc.returncode, proc.stderr


def test_damaged_files_give_one_line_that_names_them(e2e_cohort, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(e2e_cohort, weights)
    (weights / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    meta = tmp_path / "meta"
    shutil.copytree(e2e_cohort, meta)
    (meta / "shoal_meta.json").write_text('{"label_names": [')
    for folder, name in ((weights, "model.safetensors"), (meta, "shoal_meta.json")):
        code, stderr = _serve_fails(folder)
        errors = [x for x in stderr.splitlines() if x.startswith("error:")]
        assert code == 2 and len(errors) == 1, stderr
        assert str(folder / name) in errors[0] and "Traceback" not in stderr
