"""The server under test in the overload experiment: ``python -m shoal.serve.server`` as a
child process on a free loopback port, its memory and open files sampled while it runs, and
its own request counters and latency histogram read from ``/metrics``.

The server's counters are what the client's records are checked against (every request got
exactly one answer), and its histogram gives latency without the load generator's delays.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from shoal.bench.launch import free_port, stop, wait_healthy
from shoal.bench.metrics_timeline import exposition_samples


class ServerProcess:
    """``python -m shoal.serve.server`` as a child process, with its memory sampled."""

    def __init__(
        self,
        cohort: str,
        log: Path,
        flags: Sequence[str],
        file_limit: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shoal.serve.server",
                    cohort,
                    "--port",
                    str(self.port),
                    *flags,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                preexec_fn=None if file_limit is None else (lambda: _limit_files(file_limit)),
            )
        self.rss_mb: list[tuple[float, float]] = []
        self.open_files: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        wait_healthy(self.proc, self.url, self.log, timeout_s)

    @contextmanager
    def sampling_memory(self, every_s: float = 0.5) -> Iterator[None]:
        t0 = time.monotonic()

        def sample() -> None:
            while not self._stop.wait(every_s):
                t = time.monotonic() - t0
                self.rss_mb.append((t, _rss_mb(self.proc.pid)))
                self.open_files.append((t, _open_files(self.proc.pid)))

        self._stop.clear()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def stop(self) -> int:
        return stop(self.proc)


def _limit_files(n: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass(frozen=True)
class ServerCounters:
    """One scrape of the server's own request accounting."""

    statuses: dict[str, float]
    """Requests answered, by HTTP status (``shoal_requests_total``)."""
    latency_buckets: dict[float, float]
    """The server-side latency histogram: cumulative counts by upper bound in seconds."""


def scrape_counters(url: str) -> ServerCounters:
    """Requests by status, and the server-side latency histogram (cumulative, by bound)."""
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    statuses: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for s in exposition_samples(text):
        if s.name == "shoal_requests_total" and "status" in s.labels:
            status = s.labels["status"]
            statuses[status] = statuses.get(status, 0.0) + s.value
        elif s.name == "shoal_request_latency_seconds_bucket":
            bound = float(s.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + s.value
    return ServerCounters(statuses, buckets)


def server_quantiles(
    before: dict[float, float], after: dict[float, float], qs: Sequence[float] = (0.5, 0.99)
) -> dict[str, float | None]:
    """Upper bounds (ms) of the server-side latency quantiles over a run, from the histogram:
    from reading a request to sending its answer, so without the load generator's own
    delays. Counts every inference request (answers and refusals)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0.0
    out: dict[str, float | None] = {}
    for q in qs:
        hit = next((b for b, c in zip(bounds, cum) if total and c >= q * total), None)
        out[f"p{round(q * 100)}_ms"] = None if hit is None else hit * 1e3
    return out
