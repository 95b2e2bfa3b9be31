"""Where training and evaluation run: ``--device auto|cpu|cuda|cuda:N``.

Batches are built on the CPU (``shoal.data.iterate``) and moved with :func:`to_device`;
the per-token teacher and ensemble stores stay in host memory (they can be larger than a
GPU) and only each batch's rows travel.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from shoal.errors import ConfigError

DEVICE_HELP = "'auto' (the first GPU when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda:0 when CUDA is available, else cpu; refuse a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={name!r} is not a device; use {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"device={name!r}: training runs on {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} but this torch build or machine has no CUDA device; "
            "use --device cpu (or auto)"
        )
    index = 0 if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) are "
            f"visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The model inputs and labels of a batch on ``device``; ``index`` stays on the CPU, where
    it addresses the host-side stores (teacher outputs, the running ensemble)."""
    if device.type == "cpu":
        return batch
    return {k: v if k == "index" else v.to(device, non_blocking=True) for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (on a CPU without AVX512-BF16 or AMX,
    torch emulates it and bf16 autocast is slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class autocast:  # noqa: N801 - used like torch.autocast
    """``autocast(device, 'auto'|'bf16'|'fp32')()``: a context for one training step's
    forward. ``enabled`` tells whether it runs in bfloat16."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device = device
        self.enabled = precision == "bf16" or (precision == "auto" and bf16_native(device))

    def __call__(self) -> AbstractContextManager[object]:
        if not self.enabled:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
