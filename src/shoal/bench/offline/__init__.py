"""``shoal bench kernels``: offline, in-process timing of the cohort's execution paths against
the teacher, on this machine.

Cases, at batch 1 and at a large batch of SST-2-length inputs (sentences of the median SST-2
length, no padding):
- cohort *fused* (``LocalRunner``, every k; bf16 too where the CPU has native bf16),
- cohort on *ONNX Runtime* (``LocalRunner(backend='onnxruntime')``: a graph per student, every k),
  and the same with int8 students (``dtype='int8'``, dynamic quantization; k = 1 and N),
- cohort *one-by-one* (the reference path: each student in turn, every token in every layer),
- cohort *threaded* (one Python thread per student, 1 intra-op thread each),
- cohort *multi-process* (``WorkerPool``: one single-threaded worker per core, torch and ONNX
  Runtime, vs 1 worker with every core; one student and the full cohort at batch 1),
- the teacher as a user runs it (Hugging Face transformers, PyTorch eager, fp32),
- the teacher on ONNX Runtime (exported with the TorchScript exporter, graph optimisations on),
  float32 and int8 (quantized like the int8 students; they are compared with it).
Latency percentiles exclude warm-up; FLOPs are counted analytically (a multiply-add is 2) and
set against the measured fp32 matrix-multiply peak (best large GEMM). Writes JSON and a PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoal.bench.offline.config import TARGETS, KernelsConfig
from shoal.bench.offline.plot import plot
from shoal.bench.offline.run import run_kernels
from shoal.bench.offline.summary import summarize

__all__ = [
    "TARGETS",
    "KernelsConfig",
    "kernels_command",
    "plot",
    "run_kernels",
    "summarize",
    "write",
]


def write(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """kernels.json and kernels.png under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / "kernels.json", out / "kernels.png"
    js.write_text(json.dumps(result, indent=1, default=str))
    plot(result, png)
    return js, png


def kernels_command(
    out_dir: str | Path = "runs/bench/kernels",
    cohort: str | None = None,
    iters: int = 50,
    **overrides: Any,
) -> dict[str, Any]:
    """What ``shoal bench kernels`` runs: measure, then write JSON and PNG to ``out_dir``."""
    config = KernelsConfig(
        out_dir=str(out_dir),
        cohort=cohort,
        iters=iters,
        large_iters=overrides.pop("large_iters", max(3, iters // 10)),
        **overrides,
    )
    result = run_kernels(config)
    js, png = write(result, out_dir)
    print(f"wrote {js} and {png}")
    return result
