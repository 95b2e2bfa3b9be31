"""``GET /dashboard``: a self-contained live page (no CDN, no web fonts), and
``GET /dashboard/data``, the JSON it polls: per-second series over the last minutes, fed by
the same request and batch records as ``/metrics``, plus the cohort's prefix accuracy table and
the serving policy.

Both routes sit behind the API key when one is set. A browser cannot add an ``Authorization``
header to a page it navigates to, so these two routes also take the key as ``?key=``; the page
then drops it from its address and sends it only as a bearer header to its own feed.

The page treats everything it shows as text (the cohort's files are not trusted to be
HTML-safe), and its answer carries a Content-Security-Policy that runs only its own inline
script and style (by hash) and lets it connect only to its own origin, so no injected markup
can run or send the key elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shoal.serve.engine import Engine

WINDOW_S = 300
"""Seconds of history the page shows."""
_LATENCIES_PER_SECOND = 2000
"""Request latencies kept per second for its quantiles (a uniform sample beyond)."""


@dataclass
class _Second:
    t: int
    requests: int = 0
    rejected_429: int = 0
    latencies: list[float] = field(default_factory=list)
    batches: int = 0
    batch_inputs: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    k_sum: int = 0
    queue_depth: int | None = None
    k_now: int | None = None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class DashboardFeed:
    """Per-second aggregates of the last ``window_s`` seconds; thread-safe (batch records
    arrive from the engine's executor thread)."""

    def __init__(self, window_s: int = WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self._seconds: deque[_Second] = deque()
        self._lock = threading.Lock()

    def _bucket(self) -> _Second:
        now = int(self.clock())
        if not self._seconds or self._seconds[-1].t != now:
            self._seconds.append(_Second(now))
        while self._seconds and self._seconds[0].t <= now - self.window_s:
            self._seconds.popleft()
        return self._seconds[-1]

    def observe_request(self, status: int, total_s: float) -> None:
        with self._lock:
            b = self._bucket()
            b.requests += 1
            if status == 429:
                b.rejected_429 += 1
            elif len(b.latencies) < _LATENCIES_PER_SECOND:
                b.latencies.append(total_s)

    def observe_batch(self, size: int, k: int, padded_tokens: int, real_tokens: int) -> None:
        with self._lock:
            b = self._bucket()
            b.batches += 1
            b.batch_inputs += size
            b.k_sum += k
            b.padded_tokens += padded_tokens
            b.real_tokens += real_tokens

    def sample(self, queue_depth: int, k: int) -> None:
        """The engine's state now (the page polls, so every second it is open gets one)."""
        with self._lock:
            b = self._bucket()
            b.queue_depth = queue_depth
            b.k_now = k

    def series(self) -> dict[str, list[Any]]:
        """One value per second of the window, oldest first (None where nothing happened)."""
        with self._lock:
            now = int(self.clock())
            by_t = {b.t: b for b in self._seconds}
        out: dict[str, list[Any]] = {
            name: []
            for name in (
                "t", "rps", "p50_ms", "p99_ms", "queue_depth", "k", "batch_size",
                "padding_share", "rejected_429",
            )
        }  # fmt: skip
        for t in range(now - self.window_s + 1, now + 1):
            b = by_t.get(t)
            out["t"].append(t)
            out["rps"].append(b.requests if b else 0)
            out["rejected_429"].append(b.rejected_429 if b else 0)
            lat = b.latencies if b else []
            p50, p99 = _quantile(lat, 0.5), _quantile(lat, 0.99)
            out["p50_ms"].append(None if p50 is None else round(p50 * 1e3, 3))
            out["p99_ms"].append(None if p99 is None else round(p99 * 1e3, 3))
            out["queue_depth"].append(b.queue_depth if b else None)
            ran = b is not None and b.batches > 0
            k_mean = b.k_sum / b.batches if b and ran else (b.k_now if b else None)
            out["k"].append(None if k_mean is None else round(k_mean, 3))
            out["batch_size"].append(round(b.batch_inputs / b.batches, 3) if b and ran else None)
            share = 1 - b.real_tokens / b.padded_tokens if b and b.padded_tokens else None
            out["padding_share"].append(None if share is None else round(share, 4))
        return out


def page() -> str:
    """The dashboard's HTML (one file: its CSS and script inline)."""
    return resources.files("shoal.serve.api").joinpath("dashboard.html").read_text()


def _sha256_sources(html: str, tag: str) -> str:
    """CSP hash sources (``'sha256-...'``) of every inline ``<tag>`` block of ``html``."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    if not bodies:
        raise ValueError(f"the dashboard page has no inline <{tag}> block")
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
    return " ".join(f"'sha256-{d}'" for d in digests)


def page_headers(html: str) -> dict[str, str]:
    """Security headers of the page: its own inline script and style run (by hash), nothing
    else loads, it connects only to its own origin, no frame embeds it, and no ``Referer``
    (which would carry ``?key=``) leaves it."""
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256_sources(html, 'script')}",
            f"style-src {_sha256_sources(html, 'style')}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


DATA_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Headers of the feed: JSON never sniffed as a page, never cached."""


def add_dashboard(app: FastAPI, engine: Engine, info: Any, metrics: Any) -> DashboardFeed:
    """Register ``/dashboard`` and ``/dashboard/data`` on ``app``, fed by ``metrics``'
    request records and ``engine``'s batch records."""
    from fastapi.responses import HTMLResponse, JSONResponse

    feed = DashboardFeed()
    metrics.request_listeners.append(feed.observe_request)
    engine.subscribe(lambda b: feed.observe_batch(b.size, b.k, b.padded_tokens, b.real_tokens))
    html = page()
    headers = page_headers(html)

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        """The live page: load, latency, queue, k, batches, 429s, prefix table, policy."""
        return HTMLResponse(html, headers=headers)

    @app.get("/dashboard/data", include_in_schema=False)
    async def dashboard_data() -> JSONResponse:
        """The page's data: per-second series of the last minutes and the cohort's facts."""
        return JSONResponse(data(), headers=DATA_HEADERS)

    def data() -> dict[str, Any]:
        feed.sample(engine.queue_depth, engine.current_k)
        policy = engine.scheduler.config.policy
        return {
            "model_id": info.model_id,
            "labels": info.labels,
            "n_students": info.n_students,
            "k_now": engine.current_k,
            "window_s": feed.window_s,
            "series": feed.series(),
            "prefix_accuracy": info.prefix_accuracy,
            "policy": {
                k: v for k, v in asdict(policy).items() if not isinstance(v, (list, tuple, dict))
            },
        }

    return feed
