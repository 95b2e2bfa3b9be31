"""Per-token tensors of a whole split kept flat in memory: teacher outputs, ensemble states.

Rows of all examples are concatenated (no padding is stored); ``gather`` pads a batch back to
(B, L, H) in the same layout ``shoal.data.collate`` produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class TokenStore:
    """Flat (n_tokens, H) storage with per-example offsets."""

    def __init__(
        self,
        lengths: Sequence[int],
        hidden: int,
        dtype: torch.dtype = torch.float32,
        data: torch.Tensor | None = None,
    ) -> None:
        self.lengths = torch.tensor(list(lengths), dtype=torch.long)
        self.offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(self.lengths, 0)
        total = int(self.offsets[-1])
        self.data = data if data is not None else torch.zeros(total, hidden, dtype=dtype)
        if self.data.shape[0] != total:
            raise ValueError(f"store holds {self.data.shape[0]} rows, lengths need {total}")

    def _rows(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Flat row ids of the examples and their (row-in-batch, position) targets."""
        idx = torch.as_tensor(index, dtype=torch.long)
        lens = self.lengths[idx]
        width = int(lens.max())
        pos = torch.arange(width)[None, :].expand(len(idx), width)
        valid = pos < lens[:, None]
        flat = (self.offsets[idx][:, None] + pos)[valid]
        return flat, valid, width

    def gather(
        self,
        index: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Padded (B, L, H) rows of the examples at ``index`` (zeros at padding), on ``device``."""
        flat, valid, width = self._rows(index)
        out = torch.zeros(len(index), width, self.data.shape[1], dtype=dtype)
        out[valid] = self.data[flat].to(dtype)
        return out.to(device)

    def add_(self, index: Sequence[int], value: torch.Tensor, scale: float = 1.0) -> None:
        """Add ``scale * value`` (B, L, H), on any device, at the real positions of the examples."""
        flat, valid, width = self._rows(index)
        rows = value[:, :width].to(self.data.device)[valid]
        self.data[flat] += (scale * rows).to(self.data.dtype)

    def set_(self, index: Sequence[int], value: torch.Tensor) -> None:
        """Overwrite the real positions of the examples with ``value`` (B, L, H), on any device."""
        flat, valid, width = self._rows(index)
        self.data[flat] = value[:, :width].to(self.data.device)[valid].to(self.data.dtype)

    def save(self, path: Path, name: str) -> None:
        save_file(
            {"data": self.data.contiguous(), "lengths": self.lengths},
            str(path / f"{name}.safetensors"),
        )

    @classmethod
    def load(cls, path: Path, name: str) -> TokenStore:
        t = load_file(str(path / f"{name}.safetensors"))
        return cls(t["lengths"].tolist(), t["data"].shape[1], data=t["data"])
