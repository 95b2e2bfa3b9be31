"""Run a cohort on one device: the fused path, whole or over a subset of students.

A runner owns the model's tensors and its device. ``run`` is the whole cohort prefix (what a
single device serves); ``partial_sum`` is one worker's share, the weighted sum of its students'
first-token states, which the pool adds up across workers before applying the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shoal.errors import ConfigError
from shoal.models.cohort import ShoalModel
from shoal.models.fused import FusedStudents
from shoal.serve.runtime.config import check_backend
from shoal.serve.runtime.ort import OrtStudents

ArrayLike = Any
"""A (B, L) integer ``torch.Tensor`` or ``numpy.ndarray``."""


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """'float32'/'bfloat16' -> torch dtype, refusing bf16 where the hardware lacks it."""
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(
                f"dtype={dtype!r} is unknown; use 'float32', 'bfloat16', or 'int8' with "
                "backend='onnxruntime'"
            )
        dtype = getattr(torch, dtype)
    if dtype == torch.bfloat16:
        dev = torch.device(device)
        if dev.type == "cpu" and not bf16_cpu_supported():
            raise ConfigError(
                "dtype='bfloat16' needs a CPU with native bf16 (AVX512-BF16 or "
                "AMX); this one has none, use dtype='float32'"
            )
        if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"{dev} does not support bfloat16; use dtype='float32'")
    return dtype


def bf16_cpu_supported() -> bool:
    """True when oneDNN runs bf16 matmuls natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def as_tensor(x: ArrayLike | None, device: torch.device) -> torch.Tensor | None:
    """Accept torch or numpy (B, L) integer arrays."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.to(device=device, dtype=torch.long, non_blocking=True)


class LocalRunner:
    """The cohort on one device, run fused.

    Args:
        model: the cohort; moved to ``device`` and put in eval mode.
        dtype: precision of the students' matmuls: 'float32', 'bfloat16', or 'int8' (dynamic
            quantization, ONNX Runtime only).
        threads: intra-op threads (``torch.set_num_threads``, process-wide); None leaves it.
        backend: 'torch' (``FusedStudents``) or 'onnxruntime' (``OrtStudents``: CPU, float32).
    """

    def __init__(
        self,
        model: ShoalModel,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        threads: int | None = None,
        backend: str = "torch",
    ) -> None:
        self.device = torch.device(device)
        self.quantized = dtype == "int8"  # int8 students; embeddings and head stay float32
        self.dtype = resolve_dtype("float32" if self.quantized else dtype, self.device)
        named = "int8" if self.quantized else str(self.dtype).removeprefix("torch.")
        check_backend(backend, self.device.type, named)
        self.backend = backend
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = model.to(self.device).eval()
        self._stacks: dict[tuple[int, ...], FusedStudents | OrtStudents] = {}

    @property
    def n_students(self) -> int:
        return self.model.n_students

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def stack(self, students: Sequence[int]) -> tuple[FusedStudents | OrtStudents, int]:
        """A fused stack whose first ``len(students)`` entries are ``students``, and that count.

        A stack built for a block serves every prefix of the block, so a worker builds one.
        """
        want = tuple(students)
        for have, fused in self._stacks.items():
            if have[: len(want)] == want:
                return fused, len(want)
        bad = [s for s in want if not 0 <= s < self.n_students]
        if bad or not want or list(want) != sorted(set(want)):
            raise ConfigError(
                f"students {list(want)} must be distinct, ascending ids in 0..{self.n_students - 1}"
            )
        chosen = [self.model.students[i] for i in want]
        fused: FusedStudents | OrtStudents
        if self.backend == "onnxruntime":
            c = self.model.config
            fused = OrtStudents(
                chosen,
                torch.get_num_threads(),
                quantize=self.quantized,
                bias_heads=c.num_attention_heads if c.relative_attention_num_buckets else 0,
            )
        else:
            fused = FusedStudents(chosen, self.dtype)
        self._stacks[want] = fused.to(self.device)
        return self._stacks[want], len(want)

    @torch.inference_mode()
    def states(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None,
        token_type_ids: ArrayLike | None,
        students: Sequence[int],
    ) -> torch.Tensor:
        """First-token outputs of the given students.

        Shape:
            input_ids, attention_mask, token_type_ids (B, L) -> (len(students), B, H) in the
            runner's dtype, on its device.
        """
        ids = as_tensor(input_ids, self.device)
        assert ids is not None
        x, mask = self.model.embed(
            ids, as_tensor(attention_mask, self.device), as_tensor(token_type_ids, self.device)
        )
        fused, k = self.stack(students)
        return fused(x, mask, k, cls_only=True)

    @torch.inference_mode()
    def partial_sum(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None,
        token_type_ids: ArrayLike | None,
        students: Sequence[int],
        k: int,
    ) -> torch.Tensor:
        """This runner's share of the prefix k: the weighted contribution of ``students``.

        Contributions of disjoint groups of students add up; :meth:`finish` turns the sum into
        logits. With a shared head a contribution is sum_i w_i * s_i (first-token states);
        with a head per student it is sum_i w_i * head_i(s_i).

        Args:
            students: ascending ids, all < k.
            k: the prefix being served (fixes the weights; 'mean' cohorts divide by k).
        Shape:
            returns (B, H) float32 on the CPU, or (B, num_labels) with a head per student.
        """
        k = self.model.check_k(k)
        if any(s >= k for s in students):
            raise ConfigError(f"students {list(students)} are not all in the prefix k={k}")
        states = self.states(input_ids, attention_mask, token_type_ids, students)
        # Sum in float32 whatever the matmul precision.
        return self.model.students_sum(states.float(), list(students), k).float().cpu()

    @torch.inference_mode()
    def finish(self, total: torch.Tensor) -> torch.Tensor:
        """Logits from summed contributions (the shared head; nothing with per-student heads).

        Shape:
            (B, H) or (B, num_labels) -> (B, num_labels) float32 on the CPU.
        """
        return self.model.finish(total.to(self.device, torch.float32)).float().cpu()

    @torch.inference_mode()
    def run(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None,
        token_type_ids: ArrayLike | None,
        k: int,
    ) -> torch.Tensor:
        """Logits of the first k students, fused on this device.

        Shape:
            (B, L) inputs -> (B, num_labels) float32 on the CPU.
        """
        k = self.model.check_k(k)
        states = self.states(input_ids, attention_mask, token_type_ids, range(k))  # (k, B, H)
        total = self.model.students_sum(states.float(), list(range(k)), k)
        return self.model.finish(total).float().cpu()

    def warmup(self, students: Sequence[int] | None = None, length: int = 8) -> None:
        """Build the stack and run one tiny batch, so the first request pays no set-up."""
        students = tuple(range(self.n_students)) if students is None else tuple(students)
        ids = torch.full((1, length), 1, dtype=torch.long)
        self.states(ids, None, None, students)
