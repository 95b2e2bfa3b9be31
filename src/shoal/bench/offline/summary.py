"""The ratios a result is judged by, computed from its case records.

Overhead is batch-1 latency above the compute floor (FLOPs over the matmul peak of the cores a
case kept busy), full cohort against one student: a ratio near 1 means adding students costs
only their arithmetic. Speedups are set against the teacher of the same precision, and the
large batch's GFLOP/s against the peak. Plain functions of plain dicts, tested without a model.
"""

from __future__ import annotations

from typing import Any

from shoal.bench.offline.config import TARGETS
from shoal.bench.offline.timing import System


def _find(
    cases: list[dict[str, Any]],
    system: str,
    batch: int,
    k: int | None = None,
    threads: int | None = None,
) -> dict[str, Any] | None:
    for c in cases:
        if (
            c["system"] == system
            and c["batch"] == batch
            and (k is None or c["k"] == k)
            and (threads is None or c["threads"] == threads)
        ):
            return c
    return None


def _overhead(
    full: dict[str, Any], one: dict[str, Any], peak_full: float, peak_one: float
) -> dict[str, Any]:
    """Batch-1 latency above the compute floor (FLOPs over the matmul peak of the cores the
    case ran on), full cohort against one student, and their ratio."""
    over_full = full["p50_ms"] - 1e3 * full["flops"] / (peak_full * 1e9)
    over_one = one["p50_ms"] - 1e3 * one["flops"] / (peak_one * 1e9)
    return {
        "overhead_ms_full": over_full,
        "overhead_ms_one": over_one,
        "overhead_ratio": over_full / over_one if over_one > 0 else None,
    }


def _family_ratios(
    cases: list[dict[str, Any]],
    system: str,
    prefix: str,
    t: int,
    n: int,
    large: int,
    peak: float | None,
    hf: dict[str, Any] | None,
    ort: dict[str, Any] | None,
) -> dict[str, Any]:
    """One cohort implementation's ratios: overhead above the compute floor (full cohort
    against one student), speedups over both teachers at batch 1, share of the peak at the
    large batch. Keys carry ``prefix``. Without a ``peak`` (int8, whose GEMM peak is not
    measured) only the speedups and the large batch's GFLOP/s."""
    full, one = _find(cases, system, 1, n, t), _find(cases, system, 1, 1, t)
    big = _find(cases, system, large, n, t)
    row: dict[str, Any] = {}
    if full and one and peak:
        row |= _overhead(full, one, peak, peak)
    if full and hf:
        row["speedup_vs_hf_eager"] = hf["p50_ms"] / full["p50_ms"]
    if full and ort:
        row["speedup_vs_onnxruntime"] = ort["p50_ms"] / full["p50_ms"]
    if big:
        row["large_batch_gflops"] = big["gflops"]
        if peak:
            row["large_batch_peak_frac"] = big["gflops"] / peak
    return {prefix + key: value for key, value in row.items()}


def summarize(
    cases: list[dict[str, Any]], peaks: dict[str, float], n: int, large: int
) -> dict[str, Any]:
    """The judged ratios per in-process thread count and per worker layout, with ``TARGETS``."""
    out: dict[str, Any] = {}
    for key, peak in peaks.items():
        if not key.startswith("fp32_t"):
            continue
        t = int(key.removeprefix("fp32_t"))
        hf = _find(cases, System.TEACHER_HF, 1, None, t)
        ort = _find(cases, System.TEACHER_ORT, 1, None, t)
        ort8 = _find(cases, System.TEACHER_ORT_INT8, 1, None, t)
        row: dict[str, Any] = {"peak_gflops": peak}
        # (prefix, system, its peak, the ONNX Runtime teacher of the same precision)
        for prefix, system, family_peak, teacher in (
            ("", System.COHORT_FUSED, peak, ort),
            ("bf16_", System.COHORT_FUSED_BF16, peaks.get(f"bf16_t{t}"), ort),
            ("ort_", System.COHORT_ORT, peak, ort),
            ("ort_int8_", System.COHORT_ORT_INT8, None, ort8),  # no int8 peak is measured
        ):
            row |= _family_ratios(cases, system, prefix, t, n, large, family_peak, hf, teacher)
        out[f"threads_{t}"] = row
    procs = [c for c in cases if " proc x " in c["system"]]
    out["multiprocess"] = {
        f"{c['system']} b={c['batch']} k={c['k']}": {
            "p50_ms": c["p50_ms"],
            "worker_compute_ms": c.get("worker_compute_ms"),
            "cores_used": c.get("cores_used"),
        }
        for c in procs
    }
    out["multiprocess_ratios"] = _multiprocess_ratios(procs, cases, peaks, n)
    out["targets"] = TARGETS
    return out


def _multiprocess_ratios(
    procs: list[dict[str, Any]], cases: list[dict[str, Any]], peaks: dict[str, float], n: int
) -> dict[str, Any]:
    """Per worker layout: the overhead ratio, each case's floor on the cores it kept busy (one
    student occupies one worker, the full cohort every worker it is spread over), and the full
    cohort's speedups over the teachers on as many threads as the machine has cores."""
    threads = max((c["threads"] for c in cases if c["system"] == System.TEACHER_HF), default=1)
    teachers = {
        key: _find(cases, system, 1, None, threads)
        for key, system in (
            ("speedup_vs_hf_eager", System.TEACHER_HF),
            ("speedup_vs_onnxruntime", System.TEACHER_ORT),
        )
    }
    out: dict[str, Any] = {}
    for system in dict.fromkeys(c["system"] for c in procs):
        full, one = (_find(procs, system, 1, k) for k in (n, 1))
        if not full or not one:
            continue
        row: dict[str, Any] = {}
        peak_full, peak_one = (peaks.get(f"fp32_t{c.get('cores_used')}") for c in (full, one))
        if peak_full and peak_one:
            row |= _overhead(full, one, peak_full, peak_one)
        for key, teacher in teachers.items():
            if teacher:
                row[key] = teacher["p50_ms"] / full["p50_ms"]
        out[system] = row
    return out
