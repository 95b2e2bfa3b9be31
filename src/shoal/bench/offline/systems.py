"""The systems set against the cohort that Shoal's runtime does not build itself.

The teacher exported to ONNX (and quantized like the int8 students), an ONNX Runtime session
configured like the runtime's, and the cohort fanned out over Python threads. The HTTP
baselines (``bench/baselines.py``) serve the teacher through the same functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from shoal.bench.offline.inputs import model_args
from shoal.models.teacher import input_names
from shoal.serve.runtime import LocalRunner
from shoal.serve.runtime.ort import quantize_int8


def export_onnx(teacher: Any, folder: Path, sample: dict[str, torch.Tensor]) -> Path:
    """The teacher as ONNX with dynamic batch and length (TorchScript exporter)."""
    path = folder / "teacher.onnx"
    names = input_names(teacher)
    axes = {n: {0: "batch", 1: "length"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            teacher,
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def quantize_onnx(path: Path) -> Path:
    """An int8 copy of an ONNX graph, written beside it: the teacher quantized by the same
    function as Shoal's int8 students (``quantize_int8``), so the two compare like for like."""
    out = path.with_suffix(".int8.onnx")
    out.write_bytes(quantize_int8(path.read_bytes()))
    return out


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads busy-wait between runs by default; on a shared host that steals the
    # cores from whatever runs next (the same reason the torch cases run with a short OpenMP
    # spin), so the comparison turns spinning off.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def threaded_runner(
    runner: LocalRunner, k: int, pool: ThreadPoolExecutor
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """One Python thread per student; torch releases the GIL inside each op."""

    def run(x: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = pool.map(lambda i: runner.partial_sum(*model_args(x), (i,), k), range(k))
        return runner.finish(sum(parts))

    return run
