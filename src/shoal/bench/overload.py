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

    python -m shoal.bench.overload runs/cohort --data ../shared/data/sst2 --split dev
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from shoal.bench.loadgen import CLIENTS, Client, request_body, run_load_sync
from shoal.bench.report import plot_timeline, summarize, write_json
from shoal.bench.workload import Workload, WorkloadConfig, build_workload
from shoal.errors import ConfigError

_STATUS_LINE = re.compile(r'^shoal_requests_total\{status="(\d+)"\}\s+(\S+)', re.M)
_BUCKET_LINE = re.compile(r'^shoal_request_latency_seconds_bucket\{le="([^"]+)"\}\s+(\S+)', re.M)


@dataclass(frozen=True, kw_only=True)
class OverloadConfig:
    """One overload experiment."""

    cohort: str
    """Cohort folder to serve."""
    data: str = "default"
    """Texts to send (``shoal.data.load_task`` source)."""
    split: str = "test"
    """Split whose texts and labels are sent."""
    out: str = "docs/results/serve_overload"
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


# ------------------------------------------------------------------------------ server


class _Server:
    """``python -m shoal.serve.server`` as a child process, with its memory sampled."""

    def __init__(
        self,
        cohort: str,
        log: Path,
        flags: Sequence[str],
        nice: int = 0,
        file_limit: int | None = None,
    ) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
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
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=None if file_limit is None else (lambda: _limit_files(file_limit)),
            )
        self.rss_mb: list[tuple[float, float]] = []
        self.open_files: list[tuple[float, int]] = []
        self._stop = threading.Event()

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s} s; see {self.log}")

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


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


def _scrape(url: str) -> tuple[dict[str, float], dict[float, float]]:
    """Requests by status, and the server-side latency histogram (cumulative, by bound)."""
    text = httpx.get(url + "/metrics", timeout=10, trust_env=False).text
    statuses = {m.group(1): float(m.group(2)) for m in _STATUS_LINE.finditer(text)}
    buckets = {float(m.group(1)): float(m.group(2)) for m in _BUCKET_LINE.finditer(text)}
    return statuses, buckets


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


# ------------------------------------------------------------------------------ phases


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
    target_s = config.latency_target_ms / 1e3
    wl = build_workload(
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
    if queue is None:
        flags = _default_flags(config)
    else:
        flags = [
            *_common_flags(config),
            "--queue-capacity",
            str(queue),
            "--pruning" if pruning else "--no-pruning",
        ]
    server = _Server(config.cohort, out / f"server_{name}.log", flags, config.nice)
    try:
        server.wait_ready()
        info = httpx.get(server.url + "/info", trust_env=False).json()
        n_students = int(info["n_students"])
        queue = int(info["config"]["queue_capacity"])  # the derived one, with default flags
        before, hist0 = _scrape(server.url)
        with server.sampling_memory():
            result = run_load_sync(
                server.url,
                wl,
                timeout_s=30.0,
                poll_s=0.25,
                max_connections=1024,
                client=config.client,
            )
        after, hist1 = _scrape(server.url)
    finally:
        exit_code = server.stop()
    summary = summarize(
        result.records, target_s, timeline=result.timeline, duration_s=wl.duration_s
    )
    plot = plot_timeline(result.timeline, result.records, out / f"timeline_{name}.png")
    client = {str(k): v for k, v in summary["status_counts"].items()}
    server_side = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
    burst = (config.base_s, config.base_s + config.burst_s)
    ks_in = [
        s.active_students
        for s in result.timeline
        if burst[0] <= s.t_s <= burst[1] and s.active_students is not None
    ]
    ks_after = [
        s.active_students
        for s in result.timeline
        if s.t_s > burst[1] + 2.0 and s.active_students is not None
    ]
    rss = [mb for _, mb in server.rss_mb if not math.isnan(mb)]
    server_latency = server_quantiles(hist0, hist1)
    checks = {
        "one_record_per_request": len(result.records) == len(wl),
        "only_200_or_429": set(client) <= {"200", "429"},
        "no_hang": summary["timed_out"] == 0 and summary["errors"] == 0,
        "server_counts_agree": {k: v for k, v in server_side.items() if v}
        == {k: int(v) for k, v in client.items() if k.isdigit()},
        "p99_under_target": summary["p99_ms"] is not None
        and summary["p99_ms"] <= config.latency_target_ms,
        "p99_within_2x_target": summary["p99_ms"] is not None
        and summary["p99_ms"] <= 2 * config.latency_target_ms,
        "server_p99_under_target": (server_latency["p99_ms"] or math.inf)
        <= config.latency_target_ms,
        "k_dropped_in_burst": bool(ks_in) and min(ks_in) < max(ks_after or ks_in),
        "k_recovered_after": bool(ks_after) and ks_after[-1] == n_students,
        "clean_exit": exit_code == 0,
    }
    return {
        "name": name,
        "pruning": pruning,
        "queue_capacity": queue,
        "offered": {
            "base_rps": config.base_factor * capacity,
            "burst_rps": config.burst_factor * capacity,
            "requests": len(wl),
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


def _default_flags(config: OverloadConfig) -> list[str]:
    """A server as ``shoal serve COHORT`` starts it: only the latency target (when not the
    default) and the experiment's extra flags."""
    target = (
        []
        if config.latency_target_ms == 100.0
        else ["--latency-target-ms", str(config.latency_target_ms)]
    )
    return [*target, *config.extra_flags]


def soak_run(config: OverloadConfig, capacity: float, out: Path) -> dict[str, Any]:
    """``soak_s`` seconds of Poisson arrivals at ``soak_factor`` x capacity against a
    default-flags server under a 1,024-file limit, after holding ``idle_sockets`` idle
    connections open while normal clients were answered; memory and open files sampled."""
    target_s = config.latency_target_ms / 1e3
    server = _Server(
        config.cohort, out / "server_soak.log", _default_flags(config), config.nice, 1024
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


def _common_flags(config: OverloadConfig) -> list[str]:
    return [
        "--latency-target-ms",
        str(config.latency_target_ms),
        "--threads",
        str(config.threads),
        "--log-level",
        "warning",
        *config.extra_flags,
    ]


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
    server = _Server(
        config.cohort,
        out / "server_capacity.log",
        [*_common_flags(config), "--no-pruning", "--queue-capacity", "4096"],
        config.nice,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m shoal.bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("cohort")
    for name, default in (
        ("data", "default"),
        ("split", "test"),
        ("out", "docs/results/serve_overload"),
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
    args = vars(p.parse_args(argv))
    args["extra_flags"] = tuple(args["extra_flags"])
    report = run_overload(OverloadConfig(**args))
    print(
        json.dumps(
            {
                "capacity_rps": report["capacity"]["capacity_rps"],
                **{
                    r["name"]: {
                        "checks": r["checks"],
                        "p99_ms": r["summary"]["p99_ms"],
                        "answered": r["summary"]["answered"],
                        "rejected": r["summary"]["rejected"],
                        "k_min_in_burst": r["k_min_in_burst"],
                    }
                    for r in report["runs"]
                },
                **(
                    {
                        "soak": {
                            "checks": report["soak"]["checks"],
                            "rss_mb": {
                                k: v for k, v in report["soak"]["rss_mb"].items() if k != "samples"
                            },
                        }
                    }
                    if "soak" in report
                    else {}
                ),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
