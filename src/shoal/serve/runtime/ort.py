"""The students on ONNX Runtime (CPU): one exported graph per student.

The eager fused path (``FusedStudents``) spends most of a small batch outside its FLOPs:
PyTorch repacks every weight matrix on each GEMM call and runs LayerNorm and GELU as several
kernels. ONNX Runtime packs each constant weight once when the session is created and fuses
those patterns, so at batch 1 a student runs in well under half the time (``kernels.md``).
Students are exported one graph each (their last layer computing only the first token) and
run one after another; the shared embeddings and the head stay in PyTorch, so
``LocalRunner`` uses this class wherever it would use ``FusedStudents``. With
``dtype='int8'`` the graphs are quantized once at start-up (``quantize_int8``).
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoal.errors import ConfigError
from shoal.models.layers import Student


class _FirstToken(nn.Module):
    """What is exported: one student, (B, L, H) embeddings and additive mask -> (B, H)."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.student.first_token(x, mask)


def export_student(student: Student, hidden: int, bias_heads: int = 0) -> bytes:
    """One student as an ONNX graph (dynamic batch and length), serialised in memory.

    ``bias_heads`` > 0: the mask input is (B, heads, L, L), a relative position bias added to
    the padding mask (MPNet); else (B, 1, 1, L)."""
    # Eval mode on the wrapper too: the tracer records dropout of modules left in training.
    graph = _FirstToken(student).eval()
    x = torch.zeros(1, 8, hidden)
    mask = torch.zeros(1, bias_heads, 8, 8) if bias_heads else torch.zeros(1, 1, 1, 8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            graph,
            (x, mask),
            buf,
            input_names=["x", "mask"],
            output_names=["first"],
            dynamic_axes={
                "x": {0: "batch", 1: "length"},
                "mask": {0: "batch", 2: "rows", 3: "length"}
                if bias_heads
                else {0: "batch", 3: "length"},
            },
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def quantize_int8(graph: bytes) -> bytes:
    """The graph with its MatMul weights quantized to int8 (ONNX Runtime's dynamic
    quantization: activations are quantized per batch at run time, accumulation is int32).

    On CPUs with VNNI this roughly halves a student's time at small batches (``kernels.md``);
    ``shoal eval --backend onnxruntime --dtype int8`` measures what it costs in accuracy.
    Activations get one scale per batch (``DynamicQuantizeLinear``), so an input's output
    depends slightly on the other inputs of its batch.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "student.onnx", Path(tmp) / "student.int8.onnx"
        src.write_bytes(graph)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process applies to conv nets
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return dst.read_bytes()


def session(graph: bytes, threads: int) -> Any:
    """A CPU session with every graph optimisation and idle threads that sleep.

    Spinning threads would take the cores from the serving loop and the other workers on a
    small host (the reason the workers run with a short OpenMP spin too).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ConfigError(
            "backend='onnxruntime' needs the onnxruntime package; pip install onnxruntime"
        ) from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


class OrtStudents:
    """Students as ONNX Runtime sessions, called like ``FusedStudents``.

    Args:
        students: the students, in cohort order (float32 weights).
        threads: intra-op threads of every session.
        quantize: run int8 graphs (:func:`quantize_int8`) instead of float32 ones.
        bias_heads: heads of the cohort's relative position bias (0: none).
    """

    def __init__(
        self,
        students: list[Student],
        threads: int,
        quantize: bool = False,
        bias_heads: int = 0,
    ) -> None:
        hidden = students[0].layers[0].query.in_features
        graphs = [export_student(s, hidden, bias_heads) for s in students]
        if quantize:
            graphs = [quantize_int8(g) for g in graphs]
        self.sessions = [session(g, threads) for g in graphs]
        self.n_students = len(students)

    def to(self, device: torch.device | str) -> OrtStudents:
        if torch.device(device).type != "cpu":
            raise ConfigError(
                f"backend='onnxruntime' runs on the CPU only, not {device}; "
                "use backend='torch' on GPUs"
            )
        return self

    def __call__(
        self, emb: torch.Tensor, mask: torch.Tensor, k: int, *, cls_only: bool = True
    ) -> torch.Tensor:
        """First k students on shared embeddings: (B, L, H), mask as ``ShoalModel.embed``
        makes it -> (k, B, H)."""
        if not cls_only:
            raise ValueError("the ONNX graphs compute the first token only")
        feeds = {
            "x": np.ascontiguousarray(emb.float().numpy()),
            "mask": np.ascontiguousarray(mask.float().expand(emb.shape[0], -1, -1, -1).numpy()),
        }
        return torch.from_numpy(np.stack([s.run(None, feeds)[0] for s in self.sessions[:k]]))
