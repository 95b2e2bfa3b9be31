"""One ``shoal bench kernels`` run: load the models, time every group of cases, and gather
the result with the machine and the settings it came from."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from shoal.bench.offline.cases import in_process_cases, multiprocess_cases, threaded_cases
from shoal.bench.offline.config import KernelsConfig
from shoal.bench.offline.inputs import equal_length_batches
from shoal.bench.offline.summary import summarize
from shoal.bench.offline.systems import export_onnx, quantize_onnx
from shoal.bench.offline.timing import (
    Case,
    System,
    intra_op_threads,
    matmul_peak,
    measure,
    record,
)
from shoal.models.cohort import ShoalModel
from shoal.provenance import git_commit
from shoal.serve.runtime.allocation import available_cores
from shoal.serve.runtime.profile import cpu_model
from shoal.serve.runtime.runner import bf16_cpu_supported


class _Run:
    """The models, the inputs and the records of one run; ``group`` times a group of cases
    at batch 1 and at the large batch, and keeps their rows."""

    def __init__(self, config: KernelsConfig) -> None:
        from shoal.models.teacher import load_teacher

        self.config = config
        self.teacher, tok = load_teacher(config.teacher, 2)
        self.teacher.eval()
        if config.cohort:
            self.model = ShoalModel.from_pretrained(config.cohort)
        else:
            self.model = ShoalModel.from_teacher(
                self.teacher, config.n_students, config.student_layers
            ).eval()
        self.rows, self.big, self.source = equal_length_batches(
            tok, config.data, config.length, config.large_batch
        )
        self.length = self.rows[0]["input_ids"].shape[1]
        self.records: list[dict[str, Any]] = []

    def inputs(self, batch: int, r: int) -> dict[str, torch.Tensor]:
        return self.rows[r % len(self.rows)] if batch == 1 else self.big

    def group(self, cases: list[Case]) -> None:
        c = self.config
        for batch, iters, warm in ((1, c.iters, c.warmup), (c.large_batch, c.large_iters, 1)):
            chosen = [case for case in cases if case.batch == batch]
            measure(chosen, self.inputs, iters, warm)
            self.records.extend(record(case, self.length) for case in chosen)


def run_kernels(config: KernelsConfig) -> dict[str, Any]:
    """Measure every case; return a JSON-ready dict (cases, peaks, targets, machine)."""
    run = _Run(config)
    cores = len(available_cores())
    bf16 = bf16_cpu_supported()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        peaks = _in_process(run, Path(tmp), cores, bf16)
        if config.multiprocess:
            _multiprocess(run, Path(tmp), cores)
    return {
        **provenance(config),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cores": cores,
            "torch": torch.__version__,
            "bf16_native": bf16,
            "env": {
                k: os.environ.get(k)
                for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
            },
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "inputs": {"source": run.source, "length": run.length, "large_batch": config.large_batch},
        **shapes(run.model, run.teacher, config.cohort or config.teacher),
        "peaks_gflops": peaks,
        "cases": run.records,
        "summary": summarize(run.records, peaks, run.model.n_students, config.large_batch),
    }


def _in_process(run: _Run, tmp: Path, cores: int, bf16: bool) -> dict[str, float]:
    """The in-process and threaded groups at each thread count; returns the matmul peaks."""
    config, model, n = run.config, run.model, run.model.n_students
    teacher_graphs: list[tuple[str, Path]] = []  # (case name, graph): float32 and int8
    if config.onnx:
        fp32 = export_onnx(run.teacher, tmp, run.rows[0])
        teacher_graphs = [
            (System.TEACHER_ORT, fp32),
            (System.TEACHER_ORT_INT8, quantize_onnx(fp32)),
        ]
    thread_counts = config.threads or tuple(sorted({1, cores or 1}))
    peaks: dict[str, float] = {}
    for t in thread_counts:
        with intra_op_threads(t):
            peaks[f"fp32_t{t}"] = matmul_peak(t)
            if bf16:
                peaks[f"bf16_t{t}"] = matmul_peak(t, torch.bfloat16)
            print(f"threads={t}: matmul peak {peaks[f'fp32_t{t}']:.1f} GFLOP/s fp32", flush=True)
            group = in_process_cases(
                model, run.teacher, teacher_graphs, t, bf16, run.length, config.large_batch
            )
            with ThreadPoolExecutor(n) as tp:
                if t == 1:
                    group += threaded_cases(model, tp, run.length, config.large_batch)
                run.group(group)
    if 1 not in thread_counts:
        with intra_op_threads(1), ThreadPoolExecutor(n) as tp:
            run.group(threaded_cases(model, tp, run.length, config.large_batch))
    return peaks


def _multiprocess(run: _Run, tmp: Path, cores: int) -> None:
    """The worker-pool layouts; each row gets the median time inside its slowest worker."""
    config, model = run.config, run.model
    folder = config.cohort or str(tmp / "cohort")
    if not config.cohort:
        model.save_pretrained(folder)
    with contextlib.ExitStack() as stack:
        run.group(
            multiprocess_cases(
                stack,
                folder,
                model.config,
                model.n_students,
                run.length,
                config.large_batch,
                cores or 1,
            )
        )
    for rec in run.records:
        if " proc x " in rec["system"]:
            seconds = rec.pop("worker_seconds")[-rec["iters"] :]  # no warm-up
            rec["worker_compute_ms"] = 1e3 * statistics.median(seconds)


def provenance(config: Any) -> dict[str, Any]:
    """The command, the settings and the commit a result came from."""
    return {"command": config.command, "config": asdict(config), "git_commit": git_commit()}


def shapes(model: ShoalModel, teacher: Any, source: str) -> dict[str, dict[str, Any]]:
    """The 'cohort' and 'teacher' entries of a result: what was compared."""
    ccfg, tcfg = model.config, teacher.config
    return {
        "cohort": {
            "n_students": model.n_students,
            "student_layers": ccfg.student_layers,
            "hidden": ccfg.hidden_size,
            "from": source,
        },
        "teacher": {"layers": tcfg.num_hidden_layers, "hidden": tcfg.hidden_size},
    }
