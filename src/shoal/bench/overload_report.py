"""What one overload burst showed: its summary, plot and pass/fail checks, and the short
console digest of the whole experiment.

The checks, per run: every request got exactly one answer (200, or 429 for the shed ones;
the server's own per-status counters agree with the client's), nothing hung (no client
timeout or error), the p99 of the answers stayed under (or within twice) the latency target,
and the number of students in use dropped during the burst and came back after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.bench.overload_config import OverloadConfig
from shoal.bench.overload_server import ServerCounters, server_quantiles
from shoal.bench.records import MetricSample, RunResult
from shoal.bench.report import plot_timeline, summarize


@dataclass(frozen=True, kw_only=True)
class BurstRun:
    """What one burst against a fresh server observed, before any summarising."""

    name: str
    pruning: bool
    queue_capacity: int
    """The server's buffer capacity as it reported it (derived, with default flags)."""
    n_students: int
    requests: int
    """Requests in the offered workload."""
    duration_s: float
    """The offered workload's length."""
    result: RunResult
    before: ServerCounters
    after: ServerCounters
    rss_mb: list[tuple[float, float]]
    """The server's resident memory, (seconds, MB), NaN where a sample failed."""
    exit_code: int


def burst_report(
    config: OverloadConfig, capacity: float, run: BurstRun, plot_path: Path
) -> dict[str, Any]:
    """The JSON record of one burst: offered load, summary, server-side counts and latency,
    checks, students in use and memory; writes the timeline plot to ``plot_path``."""
    result = run.result
    summary = summarize(
        result.records,
        config.latency_target_ms / 1e3,
        timeline=result.timeline,
        duration_s=run.duration_s,
    )
    plot = plot_timeline(result.timeline, result.records, plot_path)
    server_side = {
        k: int(run.after.statuses.get(k, 0) - run.before.statuses.get(k, 0))
        for k in run.after.statuses
    }
    ks_in, ks_after = _students_in_and_after_burst(config, result.timeline)
    rss = [mb for _, mb in run.rss_mb if not math.isnan(mb)]
    server_latency = server_quantiles(run.before.latency_buckets, run.after.latency_buckets)
    checks = burst_checks(config, run, summary, server_side, server_latency, ks_in, ks_after)
    return {
        "name": run.name,
        "pruning": run.pruning,
        "queue_capacity": run.queue_capacity,
        "offered": {
            "base_rps": config.base_factor * capacity,
            "burst_rps": config.burst_factor * capacity,
            "requests": run.requests,
        },
        "summary": summary,
        "server_latency": server_latency,
        "server_status_counts": server_side,
        "checks": checks,
        "k_min_in_burst": min(ks_in) if ks_in else None,
        "k_last": ks_after[-1] if ks_after else None,
        "rss_mb": {
            "start": rss[0] if rss else None,
            "max": max(rss) if rss else None,
            "end": rss[-1] if rss else None,
        },
        "plot": str(plot),
    }


def burst_checks(
    config: OverloadConfig,
    run: BurstRun,
    summary: dict[str, Any],
    server_side: dict[str, int],
    server_latency: dict[str, float | None],
    ks_in: list[float],
    ks_after: list[float],
) -> dict[str, bool]:
    """Each check of one burst by name (see the module docstring)."""
    client = {str(k): v for k, v in summary["status_counts"].items()}
    target_ms = config.latency_target_ms
    return {
        "one_record_per_request": len(run.result.records) == run.requests,
        "only_200_or_429": set(client) <= {"200", "429"},
        "no_hang": summary["timed_out"] == 0 and summary["errors"] == 0,
        "server_counts_agree": {k: v for k, v in server_side.items() if v}
        == {k: int(v) for k, v in client.items() if k.isdigit()},
        "p99_under_target": summary["p99_ms"] is not None and summary["p99_ms"] <= target_ms,
        "p99_within_2x_target": summary["p99_ms"] is not None
        and summary["p99_ms"] <= 2 * target_ms,
        "server_p99_under_target": (server_latency["p99_ms"] or math.inf) <= target_ms,
        "k_dropped_in_burst": bool(ks_in) and min(ks_in) < max(ks_after or ks_in),
        "k_recovered_after": bool(ks_after) and ks_after[-1] == run.n_students,
        "clean_exit": run.exit_code == 0,
    }


def _students_in_and_after_burst(
    config: OverloadConfig, timeline: list[MetricSample]
) -> tuple[list[float], list[float]]:
    """Students in use sampled during the burst, and from two seconds after it."""
    start, end = config.base_s, config.base_s + config.burst_s
    ks_in = [
        s.active_students
        for s in timeline
        if start <= s.t_s <= end and s.active_students is not None
    ]
    ks_after = [
        s.active_students for s in timeline if s.t_s > end + 2.0 and s.active_students is not None
    ]
    return ks_in, ks_after


def console_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The experiment's digest for the terminal: capacity, each run's checks and headline
    numbers, and the soak's checks and memory (without its samples)."""
    digest: dict[str, Any] = {"capacity_rps": report["capacity"]["capacity_rps"]}
    for r in report["runs"]:
        digest[r["name"]] = {
            "checks": r["checks"],
            "p99_ms": r["summary"]["p99_ms"],
            "answered": r["summary"]["answered"],
            "rejected": r["summary"]["rejected"],
            "k_min_in_burst": r["k_min_in_burst"],
        }
    if "soak" in report:
        soak = report["soak"]
        digest["soak"] = {
            "checks": soak["checks"],
            "rss_mb": {k: v for k, v in soak["rss_mb"].items() if k != "samples"},
        }
    return digest
