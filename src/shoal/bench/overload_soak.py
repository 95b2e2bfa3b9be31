"""The overload experiment's soak: a default-flags server under a 1,024-file limit, first
handed more idle connections than it has files while normal clients are answered, then
``soak_s`` seconds of Poisson arrivals below capacity with its memory and open files sampled.

A burst shows what happens at the limit; the soak shows nothing creeps up over time (memory,
file descriptors) and that idle sockets cannot starve the server of files.
"""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from shoal.bench.loadgen import run_load_sync
from shoal.bench.overload_config import OverloadConfig, default_flags
from shoal.bench.overload_server import ServerProcess
from shoal.bench.report import summarize
from shoal.bench.workload import WorkloadConfig, build_workload


def soak_run(config: OverloadConfig, capacity: float, out: Path) -> dict[str, Any]:
    """``soak_s`` seconds of Poisson arrivals at ``soak_factor`` x capacity against a
    default-flags server under a 1,024-file limit, after holding ``idle_sockets`` idle
    connections open while normal clients were answered; memory and open files sampled."""
    target_s = config.latency_target_ms / 1e3
    server = ServerProcess(
        config.cohort, out / "server_soak.log", default_flags(config), file_limit=1024
    )
    try:
        server.wait_ready()
        idle = idle_sockets_check(server.url, config.idle_sockets)
        wl = build_workload(
            WorkloadConfig(
                kind="poisson",
                rate=config.soak_factor * capacity,
                duration_s=config.soak_s,
                data=config.data,
                split=config.split,
                seed=config.seed + 7,
            )
        )
        with server.sampling_memory(every_s=min(5.0, max(0.25, config.soak_s / 20))):
            result = run_load_sync(server.url, wl, timeout_s=30.0, poll_s=2.0, client=config.client)
    finally:
        exit_code = server.stop()
    summary = summarize(
        result.records, target_s, timeline=result.timeline, duration_s=wl.duration_s
    )
    rss = [(t, mb) for t, mb in server.rss_mb if not math.isnan(mb)]
    files = [n for _, n in server.open_files if n >= 0]
    # growth after the first minute (allocator and caches warm up), start to end
    warm = [mb for t, mb in rss if t >= min(60.0, config.soak_s / 4)]
    growth = (warm[-1] - warm[0]) if len(warm) >= 2 else None
    status = {str(k): v for k, v in summary["status_counts"].items()}
    return {
        "offered_rps": config.soak_factor * capacity,
        "seconds": config.soak_s,
        "requests": len(wl),
        "summary": summary,
        "idle_sockets": idle,
        "rss_mb": {
            "start": rss[0][1] if rss else None,
            "after_warm_up": warm[0] if warm else None,
            "end": rss[-1][1] if rss else None,
            "max": max(mb for _, mb in rss) if rss else None,
            "growth_after_warm_up": growth,
            "samples": rss,
        },
        "open_files": {"min": min(files, default=None), "max": max(files, default=None)},
        "checks": {
            "only_200": set(status) <= {"200"},
            "no_hang": summary["timed_out"] == 0 and summary["errors"] == 0,
            "p99_under_target": summary["p99_ms"] is not None
            and summary["p99_ms"] <= config.latency_target_ms,
            "idle_sockets_survived": idle["survived"],
            "clean_exit": exit_code == 0,
        },
    }


def idle_sockets_check(url: str, n: int, probes: int = 20) -> dict[str, Any]:
    """Open ``n`` connections that send nothing, then send ``probes`` normal requests: the
    server survives if every probe is answered 200 within 10 s."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:  # this process holds the idle sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 512), hard))
    host, port = url.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            try:
                held.append(socket.create_connection((host, int(port)), timeout=5))
            except OSError:
                break  # the server closed or refused one: it is the server's choice to make
        codes = []
        t0 = time.monotonic()
        with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
            for _ in range(probes):
                try:
                    codes.append(client.post("/predict", json={"inputs": "a fine day"}).status_code)
                except httpx.HTTPError as e:
                    codes.append(type(e).__name__)
        seconds = time.monotonic() - t0
    finally:
        for sock in held:
            sock.close()
    return {
        "opened": len(held),
        "probe_answers": codes,
        "probe_seconds": seconds,
        "survived": codes == [200] * probes and seconds < 10,
    }
