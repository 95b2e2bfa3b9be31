"""``/dashboard`` in a real browser: headless Chromium loads the page from a running server
after a short burst, and the page's charts hold the burst's data."""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

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


def chromium(url: str, profile: Path, *extra: str, budget_ms: int = 5000) -> str:
    """Load ``url`` headless, let its scripts run ``budget_ms`` of virtual time; stdout."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
        *extra, url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    return done.stdout


def burst(url: str, n: int = 60) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    texts = ["a good movie", "the plot was awful and slow", "fine", "not so great at all"]
    with (
        httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False) as c,
        ThreadPoolExecutor(8) as pool,
    ):
        answers = [pool.submit(c.post, "/predict", json={"inputs": texts[j % 4]}) for j in range(n)]
        codes = [a.result() for a in answers]
    assert all(r.status_code == 200 for r in codes)


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
        # the key in a query string opens the dashboard only
        assert c.get("/info", params={"key": API_KEY}).status_code == 401
    assert data.status_code == 200
    body = data.json()
    assert len(body["series"]["t"]) == body["window_s"]
    assert body["policy"]["n_students"] == body["n_students"] == 3
