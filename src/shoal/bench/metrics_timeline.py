"""The server's ``GET /metrics`` sampled into a timeline while a load run is in progress.

A run's timeline shows what the server did with the offered load: students in use, queue
depth, padded and real tokens. It is read from the Prometheus text exposition, so any server
works; one without some or all of these metrics just gives gaps (or no timeline at all).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shoal.bench.records import MetricSample

# Gauges and counters read from GET /metrics; other servers may lack some or all of them.
ACTIVE_STUDENTS = "shoal_active_students"
QUEUE_DEPTH = "shoal_queue_depth"
PADDED_TOKENS = "shoal_padded_tokens_total"
REAL_TOKENS = "shoal_real_tokens_total"
COST_SCALE = "shoal_cost_scale"
METRIC_NAMES = (ACTIVE_STUDENTS, QUEUE_DEPTH, PADDED_TOKENS, REAL_TOKENS, COST_SCALE)


def exposition_samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client; none where
    the text is not an exposition."""
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError:
        return []


def parse_prometheus(text: str, names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Values of the named samples in Prometheus text format, summed over label sets
    (per-replica gauges and counters add up to the server's total)."""
    wanted = set(names)
    out: dict[str, float] = {}
    for s in exposition_samples(text):
        if s.name in wanted:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def count_replicas(text: str) -> int | None:
    """Distinct ``replica`` labels on the active-students gauge (merged metrics of a Ray
    Serve application); None where the scrape has none (one server)."""
    found = {
        s.labels["replica"]
        for s in exposition_samples(text)
        if s.name == ACTIVE_STUDENTS and "replica" in s.labels
    }
    return len(found) or None


def metric_sample(text: str, t_s: float) -> MetricSample | None:
    """One timeline row from a scrape's text; None when it holds none of the metrics."""
    values = parse_prometheus(text)
    if not values:
        return None
    replicas = count_replicas(text)
    active = values.get(ACTIVE_STUDENTS)
    if active is not None and replicas:
        active /= replicas
    return MetricSample(
        t_s=t_s,
        active_students=active,
        replicas=replicas,
        queue_depth=values.get(QUEUE_DEPTH),
        padded_tokens=values.get(PADDED_TOKENS),
        real_tokens=values.get(REAL_TOKENS),
        cost_scale=values.get(COST_SCALE),
    )


class MetricsPoller:
    """Scrapes ``GET /metrics`` every ``poll_s`` seconds into :attr:`timeline`.

    It has its own connection so a saturated request pool cannot silence the timeline
    exactly when it matters (during a burst). Polling stops for good once the server
    answers 404 or 405 (no ``/metrics``); :attr:`available` then turns False.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str] | None, poll_s: float) -> None:
        self.poll_s = poll_s
        self.timeline: list[MetricSample] = []
        self.available = True
        self._stop = asyncio.Event()
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            trust_env=False,
            timeout=httpx.Timeout(max(poll_s, 1.0)),
            limits=httpx.Limits(max_connections=1),
        )

    async def baseline(self) -> None:
        """A first scrape, before any traffic, at t = 0: the counters' starting values."""
        self.available = await self.scrape(lambda: 0.0)

    async def poll(self, now: Callable[[], float]) -> None:
        """Scrape until :meth:`finish` is called or the server turns out to have no metrics."""
        while self.available:
            self.available = await self.scrape(now)
            if self._stop.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):  # the normal case: time to poll
                await asyncio.wait_for(self._stop.wait(), self.poll_s)

    async def finish(self, polling: asyncio.Task[None], now: Callable[[], float]) -> None:
        """Stop ``polling`` (the :meth:`poll` task), then take a closing scrape so the
        counters cover the whole run."""
        self._stop.set()
        await polling
        if self.available:
            await self.scrape(now)

    async def scrape(self, now: Callable[[], float]) -> bool:
        """Append one sample; return False when the server has no /metrics (stop polling)."""
        try:
            resp = await self._client.get("/metrics")
        except httpx.HTTPError:
            return True  # a missed scrape under load is a gap in the timeline, not the end of it
        if resp.status_code in (404, 405):
            return False
        if resp.status_code != 200:
            return True
        sample = metric_sample(resp.text, now())
        if sample is not None:
            self.timeline.append(sample)
        return True

    async def aclose(self) -> None:
        await self._client.aclose()
