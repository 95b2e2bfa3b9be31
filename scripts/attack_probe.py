"""Attack a real ``shoal serve`` process on loopback the way a hostile client or a careless
operator would, and say for each attack whether the server held.

Builds the tiny random cohort of scripts/corrupt_fields.py in a temporary folder and starts
``python -m shoal.serve.server`` on 127.0.0.1 with every flag at its default (plus a shared
--profile-cache, so the cost profile is measured once): a plain server, one with
``--body-timeout-s 120`` (only the connection cap can make room for stalled uploads) and one
with an API key. It floods them with idle sockets, trickled heads and bodies, uploads that never
send their body, oversized and malformed requests, the Hugging Face client and requests without
the key; then starts damaged copies of the cohort and drains a fresh server under load. Prints
one JSON object (and writes it to --out):

    {"commit": "...", "machine": {...}, "config": {...},
     "checks": [{"name", "attack", "expect", "got": {...}, "held": true}, ...],
     "held": 18, "failed": 0, "wall_s": 150.0}

``held``: the server answered as docs/results/serve.md says. Every socket and subprocess has a
timeout and every check an alarm, so a server that does not hold is a failed check, never a
hang. --quick runs smaller floods and one damaged cohort.

    python scripts/attack_probe.py [--out FILE] [--profile-cache DIR] [--quick]

Reproduces the attack rerun table of docs/results/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from corrupt_fields import _free_port, _memory_cap, build, corrupt

KEY = "attack-k3y"
CHECK_LIMIT_S = 150
FULL = {"n_slowloris": 50, "n_big": 4, "baseline_s": 2.0, "n_drain": 100}
QUICK = {"n_slowloris": 10, "n_big": 2, "baseline_s": 1.0, "n_drain": 50}
CONFIG_KEYS = ("max_connections", "header_timeout_s", "body_timeout_s", "latency_target_ms")
CONFIG_KEYS += ("max_header_bytes", "max_body_bytes", "max_client_batch_size", "max_input_chars")
CHECKS: list = []


def check(server: str):
    """Register a check against ``server`` ('default', 'patient', 'keyed', or '' for none);
    its docstring is the attack, then ``Held:`` and what the server should do."""

    def register(fn):
        attack, expect = (" ".join(x.split()) for x in fn.__doc__.split("Held:"))
        CHECKS.append((fn.__name__, server, attack, expect, fn))
        return fn

    return register


class Server:
    """One ``python -m shoal.serve.server`` child on 127.0.0.1; its output goes to a log."""

    def __init__(self, cohort: Path, tmp: Path, cache: Path, *flags: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        argv = [sys.executable, "-m", "shoal.serve.server", str(cohort), "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--profile-cache", str(cache), *flags]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def ready(self, timeout_s: float = 300.0) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=2, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # start-up poll: no event to wait on
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"server not ready (exit {self.proc.poll()}):\n{tail}")

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


# ------------------------------------------------------------------------------ helpers
def client(url: str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=timeout, trust_env=False)


def timed(c: httpx.Client, method: str, path: str, **kw) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    resp = c.request(method, path, **kw)
    return resp, round((time.perf_counter() - start) * 1e3, 1)


def predict_n(url: str, n: int) -> dict:
    """``n`` small /predict requests on one fresh client: statuses and latencies."""
    with client(url, 10) as c:
        runs = [timed(c, "POST", "/predict", json={"inputs": "a good movie"}) for _ in range(n)]
    ms = [t for _, t in runs]
    return {"statuses": [r.status_code for r, _ in runs], "ms": ms,
            "median_ms": statistics.median(ms), "max_ms": max(ms)}  # fmt: skip


def closed_by_reason(url: str, before: Counter | None = None) -> Counter:
    """``shoal_connections_closed_total`` by reason (less ``before``)."""
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    pattern = r'^shoal_connections_closed_total\{reason="(\w+)"\} (\S+)$'
    now = Counter({m[1]: int(float(m[2])) for m in re.finditer(pattern, text, re.MULTILINE)})
    return now - before if before is not None else now


def answer(sock: socket.socket, timeout_s: float) -> dict:
    """What the server answers until it closes the connection (within ``timeout_s``): the
    status, whether it closed, and ms to the first byte."""
    data, first, start, closed = b"", None, time.monotonic(), False
    while (left := start + timeout_s - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset
            chunk = b""
        if not chunk:
            closed = True
            break
        first = first if first is not None else round((time.monotonic() - start) * 1e3, 1)
        data += chunk
    m = re.match(rb"HTTP/1\.1 (\d{3})", data)
    return {"status": int(m[1]) if m else None, "closed": closed, "ms_to_answer": first}


def post_head(length: int | None, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}{framing}\r\n\r\n".encode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def exchange(port: int, data: bytes) -> dict:
    """Send ``data`` on a new connection; the answer."""
    with connect(port) as sock:
        sock.sendall(data)
        return answer(sock, 5)


def stream(sock: socket.socket, piece: bytes, total: int, pace_s=0.0, to_answer=True) -> int:
    """Send ``piece`` after ``piece`` (``pace_s`` apart) up to ``total`` bytes, stopping at the
    server's answer (``to_answer``) or when it stops reading; the bytes sent."""
    sent = 0
    while sent < total and not (select.select([sock], [], [], pace_s)[0] and to_answer):
        try:
            sock.sendall(piece)
        except OSError:  # reset, broken pipe, or a full window: the server stopped reading
            break
        sent += len(piece)
    return sent


def open_sockets(port: int, n: int, data: bytes = b"") -> list[socket.socket]:
    """``n`` connections, each sent ``data``, then left open; waits until the server has
    accepted them all and read every byte (the kernel's queues in /proc/net/tcp)."""
    socks = [connect(port) for _ in range(n)]
    for s in socks if data else []:
        with contextlib.suppress(OSError):  # closed already to make room at the cap
            s.sendall(data)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = [x.split() for x in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        mine = [f for f in rows if int(f[1].split(":")[1], 16) == port and f[3] in ("0A", "01")]
        if sum(int(f[4].split(":")[1], 16) for f in mine) == 0:
            break
        time.sleep(0.05)  # kernel queues: no event to wait on
    return socks


def beside_small_client(url: str, bodies: list[bytes], baseline_s: float) -> tuple[list, dict]:
    """POST ``bodies`` one after another while a small client sends small /predict requests
    one at a time: each answer with its latency (ms), and the small requests' worst latency
    before the bodies and while they were sent."""
    samples, statuses, answers, windows = [], Counter(), [], []
    stop, first = threading.Event(), threading.Event()

    def small() -> None:
        with client(url, 30) as c:
            while not stop.is_set():
                start = time.perf_counter()
                statuses[c.post("/predict", json={"inputs": "a good movie"}).status_code] += 1
                samples.append((start, time.perf_counter() - start))
                first.set()

    thread = threading.Thread(target=small, daemon=True)
    thread.start()
    try:
        if not first.wait(30):
            raise RuntimeError("no small request answered")
        time.sleep(baseline_s)  # the baseline: small requests alone
        with client(url, 120) as big:
            for body in bodies:
                start = time.perf_counter()
                r = big.post("/predict", content=body, headers={"content-type": "application/json"})
                windows.append((start, time.perf_counter()))
                answers.append((r, round((windows[-1][1] - start) * 1e3, 1)))
        time.sleep(0.2)  # small requests begun in the last window get their answer
    finally:
        stop.set()
        thread.join(60)
    base = [lat for t, lat in samples if t < windows[0][0]]
    during = [lat for t, lat in samples if any(t < e and t + lat > b for b, e in windows)]
    base_max, worst = max(base) * 1e3, max(during or [0.0]) * 1e3
    return answers, {
        "small_before_max_ms": round(base_max, 1), "small_before_n": len(base),
        "small_during_max_ms": round(worst, 1), "small_during_n": len(during),
        "added_ms": round(worst - base_max, 1), "small_statuses": dict(statuses),
    }  # fmt: skip


# ------------------------------------------------------------------------------ checks
@check("default")
def idle_sockets(ctx, srv):
    """600 idle TCP connections (no bytes), then 5 normal /predict on a fresh client.
    Held: all 5 answered 200; the idle sockets evicted or cut at the header timeout."""
    before = closed_by_reason(srv.url)
    socks = open_sockets(srv.port, 600)
    try:
        got = predict_n(srv.url, 5) | {"sockets": len(socks)}
        got["closed_delta"] = closed_by_reason(srv.url, before)
    finally:
        for s in socks:
            s.close()
    got["latency_target_ms"] = ctx["cfg"]["latency_target_ms"]
    grew = got["closed_delta"]["evicted"] + got["closed_delta"]["header_timeout"] > 0
    return got, got["statuses"] == [200] * 5 and grew


@check("default")
def slowloris_heads(ctx, srv):
    """50 sockets each sending a request head one byte per 0.5 s. Held: each closed within
    header_timeout_s + 3 s; a normal request meanwhile is 200."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    limit = ctx["cfg"]["header_timeout_s"] + 3
    before = closed_by_reason(srv.url)
    opened = {s: time.monotonic() for s in open_sockets(srv.port, ctx["n_slowloris"])}
    closed: dict[socket.socket, float] = {}
    normal, sent, start = None, 0, time.monotonic()
    while len(closed) < len(opened) and time.monotonic() - start < limit + 2:
        for s in [s for s in opened if s not in closed]:
            try:
                s.sendall(head[sent : sent + 1])
            except OSError:
                closed[s] = time.monotonic() - opened[s]
        sent, tick = sent + 1, time.monotonic() + 0.5
        while (live := [s for s in opened if s not in closed]) and time.monotonic() < tick:
            for s in select.select(live, [], [], max(0.0, tick - time.monotonic()))[0]:
                if answer(s, 0.01)["closed"]:
                    closed[s] = time.monotonic() - opened[s]
        if normal is None and time.monotonic() - start > 3:
            normal = predict_n(srv.url, 1)
    for s in opened:
        s.close()
    waits = list(closed.values()) or [float("inf")]
    got = {"sockets": len(opened), "closed": len(closed), "limit_s": limit,
           "min_s_to_close": round(min(waits), 2), "max_s_to_close": round(max(waits), 2),
           "normal_request": normal, "header_timeout_delta":
           closed_by_reason(srv.url, before)["header_timeout"]}  # fmt: skip
    ok = normal is not None and normal["statuses"] == [200]
    return got, len(closed) == len(opened) and max(waits) <= limit and ok


@check("patient")
def slow_bodies(ctx, srv):
    """600 POST heads declaring Content-Length 1000 whose body never comes, on a server with
    --body-timeout-s 120; then /health, /metrics and 5 /predict from a normal client. Held:
    all 200, median latency within latency_target_ms."""
    before = closed_by_reason(srv.url)
    socks = open_sockets(srv.port, 600, post_head(1000))
    try:
        with client(srv.url, 10) as c:
            small = {"json": {"inputs": "a good movie"}}
            runs = [timed(c, "GET", "/health"), timed(c, "GET", "/metrics")]
            runs += [timed(c, "POST", "/predict", **small) for _ in range(5)]
        closed = closed_by_reason(srv.url, before)
    finally:
        for s in socks:
            s.close()
    statuses, ms = [r.status_code for r, _ in runs], [t for _, t in runs]
    target = ctx["cfg"]["latency_target_ms"]
    ok = statuses == [200] * len(runs)
    got = {"uploads": len(socks), "statuses": statuses, "ms": ms, "first_ms": ms[0],
           "median_ms": statistics.median(ms), "max_ms": max(ms), "latency_target_ms": target,
           "evicted": closed["evicted"], "cap": closed["cap"], "closed_delta": closed,
           "slow_body_connections_survived": ok and max(ms) < target}  # fmt: skip
    return got, ok and statistics.median(ms) <= target


@check("default")
def slow_body_timeout(ctx, srv):
    """One POST body trickled 1 byte per 0.1 s. Held: 408 and the connection closed after
    about body_timeout_s."""
    limit = ctx["cfg"]["body_timeout_s"]
    with connect(srv.port) as sock:
        sock.sendall(post_head(1000))
        start = time.monotonic()
        sent = stream(sock, b" ", min(999, int((limit + 5) * 10)), pace_s=0.1)
        got = {"elapsed_s": round(time.monotonic() - start, 2), "bytes_sent": sent}
        got |= answer(sock, 5) | {"body_timeout_s": limit}
    del got["ms_to_answer"]  # the answer came while the body was sent
    ok = got["status"] == 408 and got["closed"]
    return got, ok and limit - 0.5 < got["elapsed_s"] < limit + 4


@check("default")
def head_over_limit_one_write(ctx, srv):
    """A request head over max_header_bytes in one write. Held: 431 and closed."""
    big = b"a" * (ctx["cfg"]["max_header_bytes"] + 4000)
    got = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % big)
    return got, got["status"] == 431 and got["closed"]


@check("default")
def content_length_and_chunked(ctx, srv):
    """A request framed by both Content-Length and Transfer-Encoding. Held: 400 and closed."""
    body = b'{"inputs": "a good movie"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    got = exchange(srv.port, post_head(len(body), "Transfer-Encoding: chunked\r\n") + chunked)
    return got, got["status"] == 400 and got["closed"]


@check("default")
def declared_oversize_body(ctx, srv):
    """A POST head declaring Content-Length 50 MB, and nothing more. Held: 413 answered
    without reading the body, and the connection closed."""
    got = exchange(srv.port, post_head(50 << 20))
    return got, got["status"] == 413 and got["closed"]


@check("default")
def streamed_oversize_body(ctx, srv):
    """A chunked upload streamed past the body limit. Held: 413 once past the limit."""
    limit, piece = ctx["cfg"]["body_limit"], b"a" * (1 << 16)
    with connect(srv.port) as sock:
        sock.sendall(post_head(None) + b'c\r\n{"inputs": "\r\n')
        sent = stream(sock, b"%x\r\n%s\r\n" % (len(piece), piece), 2 * limit)
        got = answer(sock, 10) | {"body_bytes_sent": sent, "body_limit": limit}
    del got["ms_to_answer"]  # the answer came while the body was sent
    return got, got["status"] == 413 and limit <= sent < 2 * limit


@check("default")
def many_items_body(ctx, srv):
    """4 bodies of 2.5 MiB of ["a"] batch items while a small client sends small requests.
    Held: each 413 naming --max-client-batch-size; the small requests' worst latency while
    the bodies arrive within 100 ms of their worst before."""
    items = ((5 << 19) - 64) // len('["a"], ')
    body = json.dumps({"inputs": [["a"]] * items}).encode()
    answers, got = beside_small_client(srv.url, [body] * ctx["n_big"], ctx["baseline_s"])
    statuses = [r.status_code for r, _ in answers]
    named = all("--max-client-batch-size" in r.text for r, _ in answers)
    got |= {"body_bytes": len(body), "statuses": statuses, "names_flag": named,
            "ms": [ms for _, ms in answers]}  # fmt: skip
    ok = statuses == [413] * len(answers) and named and set(got["small_statuses"]) == {200}
    return got, ok and got["added_ms"] < 100


def batch_answer(resp: httpx.Response, n: int) -> bool:
    return resp.status_code == 200 and len(resp.json()) == n


@check("default")
def largest_valid_body(ctx, srv):
    """32 pairs of 20,000 emoji each, escaped as json.dumps sends them, while a small client
    sends small requests. Held: 200 with 32 answers."""
    n, chars = ctx["cfg"]["max_client_batch_size"], ctx["cfg"]["max_input_chars"]
    text = "\U0001f600" * chars
    body = json.dumps({"inputs": [[text, text]] * n}).encode()
    [(resp, ms)], got = beside_small_client(srv.url, [body], ctx["baseline_s"])
    got |= {"body_bytes": len(body), "body_limit": ctx["cfg"]["body_limit"],
            "status": resp.status_code, "ms": ms}  # fmt: skip
    return got, batch_answer(resp, n)


@check("default")
def non_latin_batch(ctx, srv):
    """32 texts of 20,000 CJK characters, escaped as json.dumps sends them. Held: 200 with 32
    answers."""
    n, chars = ctx["cfg"]["max_client_batch_size"], ctx["cfg"]["max_input_chars"]
    texts = [[("中文字符测试语言模型"[i % 10] + "漢字かな") * (chars // 5)] for i in range(n)]
    body = json.dumps({"inputs": texts}).encode()
    with client(srv.url, 120) as c:
        headers = {"content-type": "application/json"}
        resp, ms = timed(c, "POST", "/predict", content=body, headers=headers)
    return {"body_bytes": len(body), "status": resp.status_code, "ms": ms}, batch_answer(resp, n)


def bad_requests(cfg: dict) -> list[tuple[str, str, bytes | None, str | None]]:
    """(method, path, body, content-type) of malformed or invalid requests."""
    j, n = "application/json", cfg["max_client_batch_size"]
    long = "a" * (cfg["max_input_chars"] + 1)
    raw = [b"", b"not json", b"{", b"null", b"[]", b'"a good movie"', b"123", b"{}",
           b'{"inputs": "a", "deadline_ms": NaN}', b'{"inputs": "a", "deadline_ms": Infinity}',
           b'{"inputs": "a", "min_k": 1' + b"1" * 5000 + b"}", b'{"inputs": "\xff\xfe"}',
           b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"inputs": "\\ud800"}',
           b'{"inputs": "a\\udfffb"}', b'{"inputs": [["\\ud83d"]]}']  # fmt: skip
    predict = [{"inputs": v} for v in (None, 5, True, {}, [], [[]], [1, 2], ["a", "b", "c"],
               [["a", "b", "c"]], [[1]], "", "   ", "\t\n", "\x00", "\u200b\u200b", "\x00\u200b",
               [["a"]] * (n + 1), long, [[long]], [[[[[["a"]]]]]])]  # fmt: skip
    predict += [{"inputs": "a", k: v} for k, v in (
        ("raw_score", True), ("raw_scores", "yes"), ("raw_scores", 1), ("truncate", 0),
        ("truncate", "false"), ("truncation_direction", "up"), ("truncation_direction", 1),
        ("parameters", "x"), ("parameters", {"top_k": 0}), ("parameters", {"top_k": "1"}),
        ("parameters", {"function_to_apply": "tanh"}), ("parameters", {"extra": 1}),
        ("min_k", 0), ("min_k", -1), ("min_k", "1"), ("min_k", 1.5), ("min_k", 3),
        ("min_k", 10**30), ("min_k", 1e300), ("deadline_ms", 0), ("deadline_ms", -1),
        ("deadline_ms", "NaN"), ("deadline_ms", 1e10), ("deadline_ms", True))]  # fmt: skip
    predict.append({"inputs": "good " * 200, "truncate": False})
    classify = [{}, {"texts": "a"}, {"texts": []}, {"texts": [1]}, {"texts": [""]},
                {"texts": [" "]}, {"texts": ["\x00"]}, {"texts": ["a"], "text_pairs": ["a", "b"]},
                {"texts": ["a"], "text_pairs": "b"}, {"texts": ["a"], "text_pairs": [None]},
                {"texts": ["a"], "min_k": 3}, {"texts": ["a"], "min_k": 0},
                {"texts": ["a"], "deadline_ms": 0}, {"texts": ["a"], "deadline_ms": "NaN"},
                {"texts": ["a"], "truncate": "yes"}, {"text": ["a"]}, {"texts": ["a"] * (n + 1)},
                {"texts": [long]}, {"texts": [None]}]  # fmt: skip
    ok, form = b'{"inputs": "a good movie"}', "application/x-www-form-urlencoded"
    cases = [("POST", "/predict", b, j) for b in raw + [json.dumps(x).encode() for x in predict]]
    cases += [("POST", "/v1/classify", json.dumps(x).encode(), j) for x in classify]
    return cases + [
        ("POST", "/v1/classify", b'{"texts": ["\\udc00"]}', j), ("POST", "/predict", ok, None),
        ("POST", "/predict", ok, "text/plain"), ("POST", "/predict", b"inputs=a", form),
        ("GET", "/predict", None, None), ("GET", "/v1/classify", None, None),
        ("PUT", "/predict", ok, j), ("DELETE", "/v1/classify", None, None),
        ("POST", "/health", ok, j), ("GET", "/nope", None, None), ("POST", "/nope", ok, j),
        ("POST", "/", b'{"inputs": 5}', j), ("POST", "/invocations", b'{"inputs": []}', j),
    ]  # fmt: skip


@check("default")
def bad_inputs(ctx, srv):
    """Malformed and invalid requests: bodies that are not JSON, every wrong type for the
    fields of /predict and /v1/classify, blank, NUL, invisible-only and lone-surrogate texts,
    unknown fields, limits passed, wrong content types and methods, unknown routes, huge and
    non-finite numbers, deep nesting. Held: every answer 4xx with {"error": str,
    "error_type": str}, none 5xx, no traceback; /health still 200 after them."""
    statuses, failures, cases = Counter(), [], bad_requests(ctx["cfg"])
    with client(srv.url, 30) as c:
        for method, path, body, ctype in cases:
            case = f"{method} {path} {body[:60]!r}" if body is not None else f"{method} {path}"
            try:
                resp = c.request(
                    method, path, content=body, headers={"content-type": ctype} if ctype else {}
                )
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1
                failures.append({"case": case, "error": repr(e)})
                continue
            statuses[resp.status_code] += 1
            try:
                shape = {k: type(v) for k, v in resp.json().items()}
            except (ValueError, AttributeError):
                shape = None
            good = 400 <= resp.status_code < 500 and shape == {"error": str, "error_type": str}
            if not good or "Traceback" in resp.text:
                failures.append({"case": case, "status": resp.status_code, "body": resp.text[:160]})
        health = c.get("/health")
    got = {"cases": len(cases), "statuses": dict(sorted(statuses.items(), key=str))}
    got |= {"failures": len(failures), "first_failures": failures[:5]}
    got["health_after"] = {"status": health.status_code, "body": health.text[:300]}
    return got, not failures and health.status_code == 200


@check("default")
def inference_client(ctx, srv):
    """huggingface_hub.InferenceClient(model=url).text_classification("a good movie"). Held:
    the cohort's labels with scores."""
    try:
        from huggingface_hub import InferenceClient, constants
    except ImportError as e:
        return {"skipped": f"huggingface_hub is not importable ({e})"}, True
    constants.HF_HUB_OFFLINE = False  # offline mode refuses loopback too
    out = InferenceClient(model=srv.url, timeout=30).text_classification("a good movie")
    got = {"labels": sorted(x.label for x in out), "scores": [round(x.score, 4) for x in out]}
    return got, got["labels"] == ctx["cfg"]["labels"]


@check("keyed")
def api_key(ctx, srv):
    """/predict with no key, a wrong key and the right key; the other routes without a key.
    Held: 401, 401, 200; /health and /ping 200; /metrics, /info, /docs, /openapi.json 401."""
    want = {"none": 401, "wrong": 401, "right": 200, "/health": 200, "/ping": 200}
    want |= {"/metrics": 401, "/info": 401, "/docs": 401, "/openapi.json": 401}
    with client(srv.url, 10) as c:
        keys = {"none": {}, "wrong": {"authorization": "Bearer nope"},
                "right": {"authorization": f"Bearer {KEY}"}}  # fmt: skip
        got = {k: c.post("/predict", json={"inputs": "a"}, headers=h).status_code
               for k, h in keys.items()}  # fmt: skip
        got |= {path: c.get(path).status_code for path in want if path.startswith("/")}
    return got, got == want


@check("keyed")
def unauthenticated_big_body(ctx, srv):
    """A POST head declaring 50 MB without a key, then body bytes streamed at it. Held: 401
    before the body is read, and the connection closed."""
    size = 50 << 20
    with connect(srv.port) as sock:
        sock.sendall(post_head(size))
        start = time.monotonic()
        first = sock.recv(4096)
        ms = round((time.monotonic() - start) * 1e3, 1)
        sent = stream(sock, b"x" * (1 << 20), size, to_answer=False)
        closed = answer(sock, 5)["closed"]
    status = int(first[9:12]) if first.startswith(b"HTTP/1.1 ") else None
    got = {"status": status, "ms_to_answer": ms, "closed": closed, "declared_bytes": size}
    got["bytes_sent_before_close"] = sent
    return got, status == 401 and closed and sent < size


@check("keyed")
def dashboard_headers(ctx, srv):
    """GET /dashboard?key=K. Held: 200, a Content-Security-Policy with default-src 'none',
    X-Frame-Options DENY, Referrer-Policy no-referrer."""
    resp = httpx.get(f"{srv.url}/dashboard", params={"key": KEY}, timeout=10, trust_env=False)
    h, csp = resp.headers, resp.headers.get("content-security-policy", "")
    got = {"status": resp.status_code, "csp": csp, "x_frame_options": h.get("x-frame-options")}
    got["referrer_policy"] = h.get("referrer-policy")
    ok = got["x_frame_options"] == "DENY" and got["referrer_policy"] == "no-referrer"
    return got, ok and resp.status_code == 200 and "default-src 'none'" in csp


def nan_copy(cohort: Path, out: Path) -> Path:
    """A copy of ``cohort`` with one weight of its second student set to NaN."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(cohort, out)
    weights = out / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if "students.1" in k and tensors[k].is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights, metadata=metadata)
    return out


def start_broken(folder: Path, cache: Path) -> dict:
    """Start the server on a damaged folder: its exit status and error lines."""
    argv = [sys.executable, "-m", "shoal.serve.server", str(folder), "--host", "127.0.0.1"]
    argv += ["--port", str(_free_port()), "--profile-cache", str(cache)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_memory_cap(8))  # fmt: skip
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [x for x in err.splitlines() if "error:" in x]
    tb = "Traceback" in out + err
    return {"rc": proc.returncode, "error_lines": lines, "traceback": tb,
            "held": proc.returncode == 2 and len(lines) == 1 and not tb}  # fmt: skip


@check("")
def broken_cohorts(ctx, srv):
    """Copies of the cohort with a NaN weight, shoal_meta.json max_length -5 and "big", and
    config.json hidden_size 16384, each started with --port. Held: exit status 2 with one
    error: line on stderr and no traceback, within 120 s."""
    cohort, tmp = ctx["cohort"], ctx["tmp"]
    folders = {"nan_weight": nan_copy(cohort, tmp / "broken-nan")}
    cases = [("max_length_-5", "shoal_meta.json", "max_length", -5),
             ("max_length_big", "shoal_meta.json", "max_length", "big"),
             ("hidden_size_16384", "config.json", "hidden_size", 16_384)]  # fmt: skip
    for label, name, field, value in cases[: 0 if ctx["quick"] else 3]:
        folders[label] = corrupt(cohort, tmp / f"broken-{label}", name, field, value)
    with ThreadPoolExecutor(2) as pool:
        ends = pool.map(lambda f: start_broken(f, ctx["cache"]), folders.values())
        got = dict(zip(folders, ends))
    return got, all(r["held"] for r in got.values())


@check("")
def drain(ctx, srv):
    """A burst of 100 concurrent /predict on a fresh server with room for all of them in its
    queue, run one input per batch (--queue-capacity 1024 --max-batch-size 1) so that SIGTERM,
    sent once the first is answered, lands mid-burst; one more request once the server has
    seen the signal. Held: every request 200, 503 or a refused connection; exit status 0."""
    flags = ("--queue-capacity", "1024", "--max-batch-size", "1")
    srv, n = Server(ctx["cohort"], ctx["tmp"], ctx["cache"], *flags), ctx["n_drain"]

    async def burst():
        limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
        options = {"timeout": 60, "limits": limits, "trust_env": False}
        async with httpx.AsyncClient(base_url=srv.url, **options) as c:
            first = asyncio.Event()

            async def one(i):
                try:
                    r = await c.post("/predict", json={"inputs": f"good movie {i % 7}"})
                except httpx.ConnectError:
                    return "refused", time.monotonic()  # never accepted
                except httpx.HTTPError as e:
                    return type(e).__name__, time.monotonic()  # accepted, then lost
                first.set()
                return r.status_code, time.monotonic()

            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            await asyncio.wait_for(first.wait(), 60)
            srv.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            deadline = signalled + 10  # until the server logs that it has seen the signal
            while "received SIGTERM" not in srv.log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the server's log: no event to wait on
            tasks.append(asyncio.ensure_future(one(n)))  # arrives while draining
            return await asyncio.gather(*tasks), signalled

    try:
        srv.ready()
        results, signalled = asyncio.run(burst())
        rc = srv.proc.wait(90)
    finally:
        srv.stop()
    counts = Counter(str(s) for s, _ in results)
    after = sum(1 for s, t in results if s == 200 and t > signalled)
    got = {"requests": n + 1, "counts": dict(counts), "answered_200_after_signal": after}
    got |= {"late_request": str(results[-1][0]), "exit": rc}
    return got, set(counts) <= {"200", "503", "refused"} and rc == 0


# ------------------------------------------------------------------------------ main
def _alarm(signum, frame):
    raise TimeoutError(f"the check ran past {CHECK_LIMIT_S} s")


def machine() -> dict:
    rows = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in rows if x.startswith("model name")), "")
    load = [round(x, 2) for x in os.getloadavg()]
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "load": load}


def git(*args: str) -> str:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def config_of(url: str) -> dict:
    """The limits the server resolved (its /info), the cohort's labels and the queue capacity
    it admits now."""
    info = httpx.get(url + "/info", timeout=10, trust_env=False).json()
    cfg = {k: info["config"][k] for k in CONFIG_KEYS} | {"labels": sorted(info["labels"])}
    cfg["body_limit"] = cfg.pop("max_body_bytes")
    metrics = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    cfg["queue_capacity_now"] = float(re.search(r"^shoal_queue_capacity (\S+)", metrics, re.M)[1])
    return cfg


def run_checks(ctx: dict, servers: dict, only: str | None) -> list[dict]:
    report = []
    for name, server, attack, expect, fn in CHECKS:
        if only and name not in only.split(","):
            continue
        start = time.monotonic()
        signal.alarm(CHECK_LIMIT_S)
        try:
            got, held = fn(ctx, servers.get(server))
        except Exception as e:  # a check that could not finish: not held, and why
            got, held = {"error": f"{type(e).__name__}: {e}"[:500]}, False
        finally:
            signal.alarm(0)
        got["check_s"] = round(time.monotonic() - start, 1)
        report.append({"name": name, "attack": attack, "expect": expect, "got": got})
        report[-1]["held"] = bool(held)
        print(f"{name}: {'held' if held else 'NOT HELD'} ({got['check_s']} s)", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="Also write the JSON here.")
    p.add_argument("--profile-cache", help="Cost profile folder (default: a temporary one).")
    p.add_argument("--quick", action="store_true", help="Smaller floods, one damaged cohort.")
    p.add_argument("--only", help="Run only these checks (comma-separated names).")
    args = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096 if hard == -1 else min(hard, 4096), hard))
    signal.signal(signal.SIGALRM, _alarm)
    started, servers, report, cfg, exits = time.monotonic(), {}, [], {}, {}
    with tempfile.TemporaryDirectory(prefix="shoal-attack-") as tmp_name:
        tmp = Path(tmp_name)
        cohort, _ = build(tmp)
        cache = Path(args.profile_cache) if args.profile_cache else tmp / "profiles"
        ctx = {"cohort": cohort, "tmp": tmp, "cache": cache, "quick": args.quick}
        ctx |= QUICK if args.quick else FULL
        try:
            servers["default"] = Server(cohort, tmp, cache).ready()  # measures the profile once
            servers["patient"] = Server(cohort, tmp, cache, "--body-timeout-s", "120")
            servers["keyed"] = Server(cohort, tmp, cache, "--api-key", KEY)
            for s in servers.values():
                s.ready()
            ctx["cfg"] = cfg = config_of(servers["default"].url)
            report = run_checks(ctx, servers, args.only)
        finally:
            exits = {name: s.stop() for name, s in servers.items()}
    result = {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "-s", "-uno"))}
    result |= {"machine": machine(), "config": cfg, "server_exits": exits, "checks": report}
    result["held"] = sum(c["held"] for c in report)
    result["failed"] = len(report) - result["held"]
    result["wall_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
