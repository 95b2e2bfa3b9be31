"""What a load run produced, as plain data: one :class:`Record` per request, the
``/metrics`` timeline as :class:`MetricSample` rows, and the :class:`RunResult` holding both.

The load generator (``shoal.bench.loadgen``) writes these and the reports
(``shoal.bench.report``) read them, so neither needs the other's code.
"""

from __future__ import annotations

from dataclasses import dataclass

TIMEOUT = "timeout"
ERROR = "error"


@dataclass(frozen=True)
class Record:
    """What happened to one request. Times are seconds since the run started.

    ``latency_s = end_s - offset_s`` (from the scheduled send, so the client's own lag is
    charged to the request); ``start_s - offset_s`` is that lag. ``status`` is the HTTP
    code, or ``"timeout"`` / ``"error"`` when no usable response came back. ``predicted``
    is None unless the status is 200 and the label could be mapped to a class index.
    """

    index: int
    offset_s: float
    start_s: float
    end_s: float
    latency_s: float
    status: int | str
    predicted: int | None
    gold: int
    queue_ms: float | None = None
    inference_ms: float | None = None
    students_used: int | None = None

    @property
    def answered(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class MetricSample:
    """One scrape of ``/metrics`` at ``t_s`` seconds since the run started (None = absent)."""

    t_s: float
    active_students: float | None
    queue_depth: float | None
    padded_tokens: float | None
    real_tokens: float | None
    cost_scale: float | None = None
    """Measured over profiled batch time (the pruning policy's calibration)."""
    replicas: int | None = None
    """Replicas in the scrape (a Ray Serve application's merged metrics); None: one server.
    With replicas, ``active_students`` is their mean and ``queue_depth`` their sum."""


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced: one record per request (in workload order) and the
    metrics timeline (empty when the server has no ``/metrics``)."""

    url: str
    started_at: str
    duration_s: float
    offered_duration_s: float
    records: list[Record]
    timeline: list[MetricSample]
    metrics_available: bool
