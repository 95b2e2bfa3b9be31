"""Reproduces docs/dashboard.png: serve a cohort, put a rising then falling load on it for a
minute, and photograph ``/dashboard`` in headless Chromium.

    python scripts/dashboard_screenshot.py runs/cohort-sst2 docs/dashboard.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

TEXTS = [
    "a gorgeous, witty, seductive movie",
    "the plot is paper-thin and the acting is worse",
    "an uneven but often affecting journey",
    "it is not a bad film , just a forgettable one",
    "one of the year 's best",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, seconds: float, peak_rps: float) -> None:
    """Open-loop requests whose rate rises to ``peak_rps`` and falls back (a burst)."""
    start = time.monotonic()
    threads: list[threading.Thread] = []
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        i = 0
        while (t := time.monotonic() - start) < seconds:
            phase = 1 - abs(2 * t / seconds - 1)  # 0 -> 1 -> 0
            rate = max(2.0, peak_rps * phase)
            body = {"inputs": TEXTS[i % len(TEXTS)]}
            th = threading.Thread(target=client.post, args=("/predict",), kwargs={"json": body})
            th.start()
            threads.append(th)
            i += 1
            time.sleep(1 / rate)
        for th in threads:
            th.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--peak-rps", type=float, default=150)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium package on PATH")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "shoal.serve.server", args.cohort, "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        load(url, args.seconds, args.peak_rps)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                    "--virtual-time-budget=3000", "--window-size=1400,1050", "--hide-scrollbars",
                    f"--screenshot={args.out.resolve()}", url + "/dashboard",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )  # fmt: skip
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
