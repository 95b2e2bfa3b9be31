"""`shoal bench serve`: Shoal and the baselines served under the same load, side by side.

Each system runs as its own server process on loopback, speaking `/predict`; the open-loop
load generator sends the same seeded workloads to each in turn:
1. low load (Poisson) -> p50/p99 and served accuracy;
2. a sweep of burst rates (on/off arrivals) -> the highest burst rate each system sustains
   within the latency target (at least ``sustain_fraction`` of all requests answered within it);
3. for each Shoal system with pruning, a timeline of its hardest burst -> latency, k and queue
   over time (``timeline_SYSTEM.png``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shoal.bench import report
from shoal.bench.launch import free_port, stop, wait_healthy
from shoal.bench.loadgen import CLIENTS, Client, run_load_sync
from shoal.bench.workload import WorkloadConfig, build_workload, check_burst
from shoal.errors import ConfigError
from shoal.provenance import git_commit
from shoal.serve.runtime.allocation import available_cores

SHOAL_SYSTEMS: dict[str, tuple[str, ...]] = {
    "shoal": (),
    "shoal-bf16": ("--dtype", "bfloat16"),  # bf16 matmuls (CPUs with native bf16, GPUs)
    "shoal-onnx": ("--backend", "onnxruntime"),  # students on ONNX Runtime (CPU)
    "shoal-onnx-int8": ("--backend", "onnxruntime", "--dtype", "int8"),  # quantized students
    # one single-threaded worker per core: the students run side by side (kernels.md)
    "shoal-onnx-per-core": (
        "--backend",
        "onnxruntime",
        "--workers",
        str(len(available_cores())),
        "--threads",
        "1",
    ),
    "shoal-no-pruning": ("--no-pruning",),
    "shoal-fifo": ("--no-pruning", "--buffer", "fifo", "--max-wait-ms", "5"),
    "deep-student": ("--no-pruning",),  # a 1-student cohort (--deep)
    # the same server as a Ray Serve application on a local Ray (docs/ray.md)
    "shoal-ray": ("--ray", "--replicas", "1", "--cpus-per-replica", "2"),
    # the same, each replica answering HTTP itself on --port + 1 (Serve's direct ingress)
    "shoal-ray-direct": (
        "--ray",
        "--proxy",
        "direct",
        "--replicas",
        "1",
        "--cpus-per-replica",
        "2",
    ),
    "shoal-ray-2x1": ("--ray", "--replicas", "2", "--cpus-per-replica", "1", "--threads", "1"),
    "shoal-ray-autoscale": (
        "--ray",
        "--replicas",
        "1",
        "--max-replicas",
        "2",
        "--cpus-per-replica",
        "1",
        "--threads",
        "1",
        "--target-ongoing-requests",
        "4",
        "--upscale-delay-s",
        "1",
        "--autoscale-window-s",
        "2",
        "--autoscale-report-s",
        "0.5",
    ),
}
"""The systems ``shoal serve`` runs, and the flags each adds to the common ones."""
TEACHER_SYSTEMS = ("teacher-torch", "teacher-onnx", "teacher-onnx-int8", "teacher-litserve")
PEER_SYSTEMS = ("infinity",)
"""Other servers of the teacher: Infinity (infinity-emb) with its own batching, over its
``/classify`` route, from the environment ``scripts/setup_infinity.sh`` makes."""
ALL_SYSTEMS = (*SHOAL_SYSTEMS, *TEACHER_SYSTEMS, *PEER_SYSTEMS)
LOCAL_SYSTEMS = tuple(
    s for s in (*SHOAL_SYSTEMS, *TEACHER_SYSTEMS) if "--ray" not in SHOAL_SYSTEMS.get(s, ())
)
"""What the base install runs: no Ray, no peer server's environment."""
PRUNING_SYSTEMS = tuple(s for s, flags in SHOAL_SYSTEMS.items() if "--no-pruning" not in flags)
"""The systems whose number of students follows the load: each gets a burst timeline plot."""


@dataclass(frozen=True, kw_only=True)
class ServeBenchConfig:
    """One serving benchmark."""

    cohort: str
    """Shoal cohort folder."""
    teacher: str
    """The fine-tuned teacher the cohort was distilled from."""
    data: str
    """Where request texts and gold labels come from."""
    deep: str | None = None
    """A single deep student (a 1-student cohort), e.g. the 'deep' ablation; optional."""
    split: str = "test"
    out: str = "runs/bench/serve"
    systems: tuple[str, ...] = LOCAL_SYSTEMS
    latency_target_ms: float = 100.0
    """The latency objective: goodput and the sustained rate are measured against it."""
    low_rate: float = 5.0
    """Requests/s of the low-load run."""
    low_duration_s: float = 20.0
    burst_rates: tuple[float, ...] = (20.0, 40.0, 80.0, 160.0, 320.0)
    """Burst arrival rates tried (requests/s), in increasing order."""
    base_rate: float = 5.0
    """Arrival rate between bursts."""
    burst_s: float = 6.0
    """Length of each burst: the last ``burst_s`` of every ``period_s``."""
    period_s: float = 12.0
    sweep_duration_s: float = 24.0
    sustain_fraction: float = 0.95
    """Share of requests that must be answered within the target to count as sustained."""
    max_length: int = 128
    threads: int = 0
    """Intra-op threads of each server (0: default)."""
    seed: int = 0
    port: int = 0
    """First port to use (0: pick free ones)."""
    extra_shoal_flags: tuple[str, ...] = field(default_factory=tuple)
    infinity: str = ".venv-infinity/bin/infinity_emb"
    """Infinity's command-line entry point (system 'infinity')."""
    client: Client = "httpx"
    """Load generator transport (``shoal.bench.loadgen``): 'raw' keeps its cost per request
    flat with hundreds of requests in flight, for rates near the machine's limit."""

    def __post_init__(self) -> None:
        if self.client not in CLIENTS:
            raise ConfigError(f"client={self.client!r} must be one of {CLIENTS}")
        unknown = set(self.systems) - set(ALL_SYSTEMS)
        if unknown:
            raise ConfigError(f"unknown systems {sorted(unknown)}; choose from {ALL_SYSTEMS}")
        check_burst(self.burst_s, self.period_s)
        if "deep-student" in self.systems and not self.deep:
            raise ConfigError("system 'deep-student' needs --deep (a 1-student cohort folder)")
        if "infinity" in self.systems and not Path(self.infinity).is_file():
            raise ConfigError(
                f"system 'infinity' needs Infinity at {self.infinity}; create it with "
                "bash scripts/setup_infinity.sh (or give its path with --infinity)"
            )


def server_command(system: str, config: ServeBenchConfig, port: int) -> list[str]:
    """The command line that serves one system on 127.0.0.1:port."""
    py = sys.executable
    target = str(config.latency_target_ms)
    threads = ["--threads", str(config.threads)] if config.threads else []
    if system in SHOAL_SYSTEMS:
        folder = config.deep if system == "deep-student" else config.cohort
        cmd = [
            py,
            "-m",
            "shoal.serve.server",
            str(folder),
            "--port",
            str(port),
            "--latency-target-ms",
            target,
            "--log-level",
            "warning",
            "--max-length",
            str(config.max_length),
            *threads,
            *SHOAL_SYSTEMS[system],
            *config.extra_shoal_flags,  # last, so that they override the system's own
        ]
        return cmd
    if system == "infinity":
        return [
            config.infinity,
            "v2",
            "--model-id",
            str(Path(config.teacher).resolve()),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--log-level",
            "warning",
        ]
    backend = {
        "teacher-torch": "torch",
        "teacher-onnx": "onnx",
        "teacher-onnx-int8": "onnx-int8",
        "teacher-litserve": "torch",
    }[system]
    server = "litserve" if system == "teacher-litserve" else "fastapi"
    return [
        py,
        "-m",
        "shoal.bench.baselines",
        "--model",
        config.teacher,
        "--backend",
        backend,
        "--server",
        server,
        "--port",
        str(port),
        "--max-batch",
        "32",
        "--max-wait-ms",
        "5",
        "--max-length",
        str(config.max_length),
        *threads,
    ]


def load_port(system: str, port: int) -> int:
    """The port the load goes to: the server's, or with --proxy direct its one replica's
    (direct ingress gives replicas the ports from --port + 1)."""
    flags = SHOAL_SYSTEMS.get(system, ())
    direct = "--proxy" in flags and flags[flags.index("--proxy") + 1] == "direct"
    return port + 1 if direct else port


@contextlib.contextmanager
def running(cmd: list[str], port: int, log_path: Path, timeout_s: float = 300.0) -> Iterator[str]:
    """Start a server, wait for /health on ``port``, yield its URL, then stop it with
    SIGTERM."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(proc, url, log_path, timeout_s)
            yield url
        finally:
            stop(proc, group=True)


def _label_names(config: ServeBenchConfig) -> list[str]:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(config.teacher)
    return [str(hf.id2label[i]) for i in range(hf.num_labels)]


def run_serve_bench(config: ServeBenchConfig) -> dict[str, Any]:
    """Run every experiment for every system; write JSON, plots and a markdown report."""
    from shoal.data import load_task

    out = Path(config.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    task = load_task(config.data)
    labels = _label_names(config)
    low = build_workload(
        WorkloadConfig(
            kind="poisson",
            rate=config.low_rate,
            duration_s=config.low_duration_s,
            data=config.data,
            split=config.split,
            seed=config.seed,
        ),
        task=task,
    )
    results: dict[str, Any] = {"config": asdict(config), "machine": machine(), "systems": {}}
    runs_low: dict[str, list] = {}
    load_points: dict[str, list] = {}
    timeline_runs: dict[str, Any] = {}
    for system in config.systems:
        port = config.port or free_port()
        cmd = server_command(system, config, port)
        entry: dict[str, Any] = {"command": " ".join(cmd), "sweep": []}
        print(f"[bench] {system}: starting", flush=True)
        try:
            last = _bench_system(
                system, cmd, port, config, task, labels, low, entry, runs_low, load_points, out
            )
        except RuntimeError as e:  # a server that fails to start is reported, not fatal
            print(f"[bench] {system}: FAILED: {e}", flush=True)
            entry["error"] = str(e)
            results["systems"][system] = entry
            continue
        if system in PRUNING_SYSTEMS and last is not None:
            timeline_runs[system] = last
        results["systems"][system] = entry
        report.write_json(results, out / "bench.json")
    _write_report(config, results, runs_low, load_points, timeline_runs, out)
    return results


def _bench_system(
    system, cmd, port, config, task, labels, low, entry, runs_low, load_points, out
) -> Any:
    """Low load, then the burst sweep, against one running server; fills ``entry`` and
    returns the run of the last (hardest) burst this system was given."""
    target_s = config.latency_target_ms / 1000
    last = None
    api = "infinity" if system == "infinity" else "tei"
    with running(cmd, load_port(system, port), out / "logs" / f"{system}.log") as url:
        run_load_sync(
            url,
            build_workload(
                WorkloadConfig(
                    kind="poisson",
                    rate=config.low_rate,
                    duration_s=3.0,
                    data=config.data,
                    split=config.split,
                    seed=config.seed + 99,
                ),
                task=task,
            ),
            labels=labels,
            timeout_s=30,
            client=config.client,
            api=api,
        )  # warm-up, not recorded
        res = run_load_sync(url, low, labels=labels, timeout_s=30, client=config.client, api=api)
        entry["low_load"] = report.summarize(
            res.records, target_s, timeline=res.timeline, duration_s=res.offered_duration_s
        )
        runs_low[system] = res.records
        print(f"[bench] {system}: low load p50 {entry['low_load'].get('p50_ms')} ms", flush=True)
        sustained = 0.0
        for rate in config.burst_rates:
            wl = build_workload(
                WorkloadConfig(
                    kind="on_off",
                    rate=config.base_rate,
                    burst_rate=rate,
                    period_s=config.period_s,
                    burst_s=config.burst_s,
                    duration_s=config.sweep_duration_s,
                    data=config.data,
                    split=config.split,
                    seed=config.seed + int(rate),
                ),
                task=task,
            )
            res = run_load_sync(
                url,
                wl,
                labels=labels,
                timeout_s=max(5.0, 20 * target_s),
                client=config.client,
                api=api,
            )
            s = report.summarize(
                res.records, target_s, timeline=res.timeline, duration_s=res.offered_duration_s
            )
            s["burst_rate"] = rate
            entry["sweep"].append(s)
            load_points.setdefault(system, []).append(report.load_point(s))
            ok = (s.get("slo_attainment") or 0) >= config.sustain_fraction
            print(
                f"[bench] {system}: burst {rate}/s within-target "
                f"{s.get('slo_attainment')} k {s.get('mean_students_used')}",
                flush=True,
            )
            last = res  # the last (hardest) burst this system was given
            if not ok:
                break
            sustained = rate
        entry["sustained_burst_rate"] = sustained
    return last


def _write_report(config, results, runs_low, load_points, timeline_runs, out) -> None:
    """Plots and the markdown report from whatever systems completed."""
    target_s = config.latency_target_ms / 1000
    done = {k: v for k, v in results["systems"].items() if "low_load" in v}
    sweeps = {k: [v["low_load"], *v.get("sweep", [])] for k, v in done.items()}
    plots = {
        "Latency and students k against offered load": report.plot_story(
            sweeps, out / "story.png", target_s, [s for s in done if s in PRUNING_SYSTEMS]
        ),
        "Latency CDF at low load": report.plot_latency_cdf(
            runs_low, out / "latency_cdf.png", target_s
        ),
        "Latency vs offered load": report.plot_latency_vs_load(
            load_points, out / "latency_vs_load.png", target_s
        ),
        "Accuracy vs latency (low load)": report.plot_accuracy_vs_latency(
            {k: v["low_load"] for k, v in done.items()}, out / "accuracy_vs_latency.png"
        ),
    }
    for system, run in timeline_runs.items():
        plots[f"{system} through its hardest burst: latency, k and queue"] = report.plot_timeline(
            run.timeline, run.records, out / f"timeline_{system}.png"
        )
        replicas = [s.replicas for s in run.timeline if s.replicas is not None]
        if replicas:
            results["systems"][system]["replicas_seen"] = [min(replicas), max(replicas)]
    table = {
        name: {**v["low_load"], "sustained_burst_rate": v["sustained_burst_rate"]}
        for name, v in done.items()
    }
    command = "shoal bench serve " + " ".join(sys.argv[3:]) if len(sys.argv) > 2 else ""
    report.write_markdown(
        table,
        plots,
        out / "bench.md",
        command,
        json.dumps(machine()),
        title=f"Serving benchmark on {Path(config.data).name}",
    )
    report.write_json(results, out / "bench.json")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    commit = git_commit()
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit,
        "platform": platform.platform(),
    }
