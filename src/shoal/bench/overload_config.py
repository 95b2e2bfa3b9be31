"""The overload experiment's settings, and the server flags each of its runs starts with.

One frozen dataclass shared by the burst runs (``shoal.bench.overload``) and the soak
(``shoal.bench.overload_soak``); the CLI and ``python -m shoal.bench.overload`` map their
flags onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.bench.loadgen import CLIENTS, Client
from shoal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class OverloadConfig:
    """One overload experiment."""

    cohort: str
    """Cohort folder to serve."""
    data: str = "default"
    """Texts to send (``shoal.data.load_task`` source)."""
    split: str = "test"
    """Split whose texts and labels are sent."""
    out: str = "runs/bench/overload"
    """Folder for the JSON, the plots and the server logs."""
    latency_target_ms: float = 100.0
    """The server's latency target (and the goodput threshold)."""
    probe_s: float = 10.0
    """Length of the capacity probe."""
    probe_concurrency: int = 64
    """Closed-loop clients of the capacity probe."""
    burst_factor: float = 2.0
    """Offered rate in the burst, in multiples of capacity."""
    burst_s: float = 30.0
    """Length of the burst."""
    base_factor: float = 0.5
    """Offered rate before and after the burst, in multiples of capacity."""
    base_s: float = 10.0
    """Length of the quiet phase before and after the burst."""
    queue_target_fraction: float = 1.0
    """Buffer capacity as a fraction of one latency target's worth of requests at capacity."""
    threads: int = 1
    """Server intra-op threads."""
    seed: int = 0
    nice: int = 0
    """Scheduling priority of the server processes and of this (client) thread; negative
    (root only) shields the measurement from background jobs on a shared machine."""
    extra_flags: tuple[str, ...] = ()
    """More ``shoal.serve.server`` flags for every server started."""
    client: Client = "raw"
    """Load generator transport: 'raw' (constant cost per request however many are in
    flight) or 'httpx' (its pool's cost grows with the requests in flight)."""
    tuned: bool = True
    """Run the burst with pruning off and on, the queue sized to one latency target's worth
    of work at capacity (``queue_target_fraction``)."""
    default_flags: bool = False
    """Also run the burst against a server with every flag at its default (derived queue
    capacity, default threads, pruning on): what a user gets from ``shoal serve COHORT``."""
    soak_s: float = 0.0
    """Then soak a default-flags server this long at ``soak_factor`` x capacity, its memory
    and open files sampled (0: no soak). The soak starts by holding ``idle_sockets`` idle
    connections open under a 1,024-file limit while normal clients are answered."""
    soak_factor: float = 0.8
    idle_sockets: int = 1100

    def __post_init__(self) -> None:
        for name in (
            "latency_target_ms",
            "probe_s",
            "burst_factor",
            "burst_s",
            "base_factor",
            "base_s",
            "queue_target_fraction",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.client not in CLIENTS:
            raise ConfigError(f"client={self.client!r} must be one of {CLIENTS}")


def default_flags(config: OverloadConfig) -> list[str]:
    """A server as ``shoal serve COHORT`` starts it: only the latency target (when not the
    default) and the experiment's extra flags."""
    target = (
        []
        if config.latency_target_ms == 100.0
        else ["--latency-target-ms", str(config.latency_target_ms)]
    )
    return [*target, *config.extra_flags]


def common_flags(config: OverloadConfig) -> list[str]:
    """The flags of every tuned server: latency target, threads, quiet logs, extra flags."""
    return [
        "--latency-target-ms",
        str(config.latency_target_ms),
        "--threads",
        str(config.threads),
        "--log-level",
        "warning",
        *config.extra_flags,
    ]
