"""The timing harness: cases timed round-robin, percentiles without warm-up, the matmul peak.

Every case returns its result on the CPU, so a wall-clock time around the call already
includes the device's work; no separate synchronisation is needed. Cases of a group are
interleaved round by round so a load change on a shared host hits them all alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch


class System(StrEnum):
    """The execution paths the offline benchmarks time, by kind; each value is the label the
    results (JSON, tables, plots) carry. The worker-pool layouts are labelled by their shape
    (``cohort W proc x T thr``)."""

    COHORT_FUSED = "cohort fused"
    COHORT_FUSED_BF16 = "cohort fused bf16"
    COHORT_ORT = "cohort ONNX Runtime"
    COHORT_ORT_INT8 = "cohort ONNX Runtime int8"
    COHORT_ONE_BY_ONE = "cohort one-by-one"
    COHORT_THREADED = "cohort threaded"
    TEACHER_HF = "teacher HF eager"
    TEACHER_HF_BF16 = "teacher HF eager bf16"
    TEACHER_ORT = "teacher ONNX Runtime"
    TEACHER_ORT_INT8 = "teacher ONNX Runtime int8"

    @classmethod
    def fused(cls, bf16: bool) -> System:
        return cls.COHORT_FUSED_BF16 if bf16 else cls.COHORT_FUSED

    @classmethod
    def teacher(cls, bf16: bool) -> System:
        return cls.TEACHER_HF_BF16 if bf16 else cls.TEACHER_HF


@dataclass
class Case:
    """One system at one batch size, timed round-robin with the others of its group."""

    system: str
    batch: int
    k: int | None
    threads: int
    flops: int
    fn: Callable[[dict[str, torch.Tensor]], Any]
    extra: dict[str, Any] = field(default_factory=dict)
    times_ms: list[float] = field(default_factory=list)


def measure(
    cases: list[Case],
    inputs: Callable[[int, int], dict[str, torch.Tensor]],
    iters: int,
    warmup: int,
) -> None:
    """Time the cases round-robin: every round runs each case once on the same input, so a
    load change on a shared machine hits every case alike (ratios stay fair)."""
    for r in range(warmup + iters):
        for c in cases:
            x = inputs(c.batch, r)
            t0 = time.perf_counter()
            c.fn(x)  # returns CPU results: the device is synchronised
            if r >= warmup:
                c.times_ms.append((time.perf_counter() - t0) * 1e3)


def record(c: Case, length: int) -> dict[str, Any]:
    """A timed case as a JSON-ready row (percentiles, mean, achieved GFLOP/s); printed too."""
    p = np.percentile(c.times_ms, [50, 90, 99])
    out = {
        "system": c.system,
        "batch": c.batch,
        "length": length,
        "k": c.k,
        "threads": c.threads,
        "flops": c.flops,
        "p50_ms": float(p[0]),
        "p90_ms": float(p[1]),
        "p99_ms": float(p[2]),
        "mean_ms": statistics.fmean(c.times_ms),
        "iters": len(c.times_ms),
        **c.extra,
    }
    out["gflops"] = c.flops / (out["p50_ms"] / 1e3) / 1e9
    print(
        f"  {c.system:<30} b={c.batch:<3} k={c.k!s:<4} t={c.threads} p50 "
        f"{out['p50_ms']:8.2f} ms  {out['gflops']:6.1f} GFLOP/s",
        flush=True,
    )
    return out


def matmul_peak(
    threads: int, dtype: torch.dtype = torch.float32, n: int = 2048, iters: int = 5
) -> float:
    """Best GFLOP/s of an n x n x n GEMM at ``threads`` intra-op threads."""
    with intra_op_threads(threads):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_once(lambda: a @ b) for _ in range(iters))
    return 2 * n**3 / best / 1e9


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
