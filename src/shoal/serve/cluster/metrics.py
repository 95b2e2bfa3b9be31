"""One Prometheus scrape for every replica: each replica's own exposition (the single-host
metric names) gains ``replica`` and ``node`` labels, and the families are merged so one
``/metrics`` answer holds them all. PromQL then sums over replicas as usual, e.g.
``histogram_quantile(0.99, sum by (le) (rate(shoal_request_latency_seconds_bucket[1m])))``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class ReplicaReport:
    """What one replica last told the coordinator."""

    node: str
    """Ray node id the replica runs on."""
    exposition: bytes
    """Its ``/metrics`` text (Prometheus text format)."""
    busy: int
    """Inputs queued or running in its engine."""
    draining: bool
    """Whether it has stopped accepting."""
    at: float
    """``time.monotonic()`` of the report (in the coordinator's clock)."""


def merge_expositions(reports: Mapping[str, tuple[str, bytes]]) -> bytes:
    """One exposition holding every replica's samples, each labelled with its replica and node.

    Args:
        reports: replica id -> (node id, that replica's exposition).
    Returns:
        Prometheus text format, one HELP/TYPE per family.
    """
    families: dict[str, Metric] = {}
    for replica, (node, text) in sorted(reports.items()):
        for family in text_string_to_metric_families(text.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            for s in family.samples:
                labels = {**s.labels, "replica": replica, "node": node}
                merged.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            yield from families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)
