"""The overload experiment: measure the server's capacity, then offer a burst at twice that.

1. Capacity: a closed loop of concurrent clients keeps a server with pruning off (all N
   students) saturated; capacity is the answers per second it sustains.
2. Overload, once with pruning off and once on: an open-loop on/off workload, ``base_factor``
   x capacity for ``base_s``, ``burst_factor`` x capacity for ``burst_s``, base again. The
   buffer holds about one latency target's worth of work at capacity; beyond it, 429.

Checked for each run: every request got exactly one answer (200, or 429 for the shed ones;
the server's own per-status counters agree with the client's), nothing hung (no client
timeout), the server's memory stayed bounded; and with pruning on, the p99 of the answers
under the target while k dropped during the burst and came back after it.

The settings are in ``shoal.bench.overload_config``, the server process in
``shoal.bench.overload_server``, the soak in ``shoal.bench.overload_soak`` and the checks
in ``shoal.bench.overload_report``.

    python -m shoal.bench.overload runs/cohort --data ../shared/data/sst2 --split dev
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from shoal.bench.loadgen import CLIENTS, run_load_sync
from shoal.bench.overload_config import OverloadConfig, common_flags, default_flags
from shoal.bench.overload_report import BurstRun, burst_report, console_summary
from shoal.bench.overload_server import ServerProcess, scrape_counters
from shoal.bench.overload_soak import soak_run
from shoal.bench.protocol import request_body
from shoal.bench.report import write_json
from shoal.bench.workload import Workload, WorkloadConfig, build_workload


def measure_capacity(
    url: str, workload: Workload, seconds: float, concurrency: int
) -> dict[str, float]:
    """Answers per second a closed loop of ``concurrency`` clients gets from the server."""

    async def run() -> tuple[int, int, float]:
        reqs = workload.requests
        limits = httpx.Limits(max_connections=concurrency)
        done = errors = 0
        async with httpx.AsyncClient(
            base_url=url, timeout=30, limits=limits, trust_env=False
        ) as client:
            t0 = time.perf_counter()
            stop = t0 + seconds

            async def worker(w: int) -> None:
                nonlocal done, errors
                i = w
                while time.perf_counter() < stop:
                    r = await client.post("/predict", json=request_body(reqs[i % len(reqs)]))
                    done, errors = done + (r.status_code == 200), errors + (r.status_code != 200)
                    i += concurrency

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return done, errors, time.perf_counter() - t0

    done, errors, elapsed = asyncio.run(run())
    return {"answered": done, "errors": errors, "seconds": elapsed, "capacity_rps": done / elapsed}


def overload_run(
    config: OverloadConfig,
    name: str,
    pruning: bool,
    capacity: float,
    queue: int | None,
    out: Path,
) -> dict[str, Any]:
    """One on/off burst against a fresh server; the summary, checks and plot. ``queue``
    None: the server with every flag at its default."""
    wl = _burst_workload(config, capacity)
    if queue is None:
        flags = default_flags(config)
    else:
        flags = [
            *common_flags(config),
            "--queue-capacity",
            str(queue),
            "--pruning" if pruning else "--no-pruning",
        ]
    server = ServerProcess(config.cohort, out / f"server_{name}.log", flags)
    try:
        server.wait_ready()
        info = httpx.get(server.url + "/info", trust_env=False).json()
        n_students = int(info["n_students"])
        queue = int(info["config"]["queue_capacity"])  # the derived one, with default flags
        before = scrape_counters(server.url)
        with server.sampling_memory():
            result = run_load_sync(
                server.url,
                wl,
                timeout_s=30.0,
                poll_s=0.25,
                max_connections=1024,
                client=config.client,
            )
        after = scrape_counters(server.url)
    finally:
        exit_code = server.stop()
    run = BurstRun(
        name=name,
        pruning=pruning,
        queue_capacity=queue,
        n_students=n_students,
        requests=len(wl),
        duration_s=wl.duration_s,
        result=result,
        before=before,
        after=after,
        rss_mb=server.rss_mb,
        exit_code=exit_code,
    )
    return burst_report(config, capacity, run, out / f"timeline_{name}.png")


def _burst_workload(config: OverloadConfig, capacity: float) -> Workload:
    """Base rate for ``base_s``, the burst for ``burst_s``, base rate again."""
    return build_workload(
        WorkloadConfig(
            kind="on_off",
            rate=config.base_factor * capacity,
            burst_rate=config.burst_factor * capacity,
            period_s=config.base_s + config.burst_s,
            burst_s=config.burst_s,
            duration_s=2 * config.base_s + config.burst_s,
            data=config.data,
            split=config.split,
            seed=config.seed,
        )
    )


def run_overload(config: OverloadConfig) -> dict[str, Any]:
    """The whole experiment; writes ``overload.json`` and plots to ``config.out``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    probe_wl = build_workload(
        WorkloadConfig(
            kind="poisson",
            rate=100.0,
            duration_s=10.0,
            data=config.data,
            split=config.split,
            seed=config.seed + 1,
        )
    )
    if config.nice:
        os.setpriority(os.PRIO_PROCESS, 0, config.nice)  # the load generator's thread
    server = ServerProcess(
        config.cohort,
        out / "server_capacity.log",
        [*common_flags(config), "--no-pruning", "--queue-capacity", "4096"],
    )
    try:
        server.wait_ready()
        measure_capacity(server.url, probe_wl, min(2.0, config.probe_s), 8)  # warm-up
        capacity = measure_capacity(server.url, probe_wl, config.probe_s, config.probe_concurrency)
    finally:
        server.stop()
    cap = capacity["capacity_rps"]
    queue = max(4, round(cap * config.latency_target_ms / 1e3 * config.queue_target_fraction))
    variants: list[tuple[str, bool, int | None]] = []
    if config.tuned:
        variants += [("pruning_off", False, queue), ("pruning_on", True, queue)]
    if config.default_flags:
        variants.append(("default_flags", True, None))
    runs = [overload_run(config, name, pruning, cap, q, out) for name, pruning, q in variants]
    report: dict[str, Any] = {"config": asdict(config), "capacity": capacity, "runs": runs}
    if config.soak_s > 0:
        report["soak"] = soak_run(config, cap, out)
    write_json(report, out / "overload.json")
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shoal.bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cohort")
    for name, default in (
        ("data", "default"),
        ("split", "test"),
        ("out", "runs/bench/overload"),
    ):
        p.add_argument(f"--{name}", default=default)
    for name, default in (
        ("latency_target_ms", 100.0),
        ("probe_s", 10.0),
        ("burst_s", 30.0),
        ("base_s", 10.0),
        ("burst_factor", 2.0),
        ("base_factor", 0.5),
        ("queue_target_fraction", 1.0),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=default)
    p.add_argument("--probe-concurrency", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--client", choices=CLIENTS, default="raw")
    p.add_argument(
        "--default-flags",
        action="store_true",
        help="also burst a server with every flag at its default",
    )
    p.add_argument("--no-tuned", action="store_false", dest="tuned", help="skip the tuned runs")
    p.add_argument("--soak-s", type=float, default=0.0, help="then soak a default server (s)")
    p.add_argument("--soak-factor", type=float, default=0.8)
    p.add_argument("--idle-sockets", type=int, default=1100)
    p.add_argument(
        "--server-flag",
        action="append",
        default=[],
        dest="extra_flags",
        help="extra flag for the server, e.g. --server-flag=--up-hold-s=2",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    args["extra_flags"] = tuple(args["extra_flags"])
    report = run_overload(OverloadConfig(**args))
    print(json.dumps(console_summary(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
