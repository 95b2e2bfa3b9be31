"""Per-token tensors of a whole split kept flat: teacher outputs, ensemble states.

Rows of all examples are concatenated (no padding is stored); ``gather`` pads a batch back to
(B, L, H) in the same layout ``shoal.data.collate`` produces. A store lives in host memory, or
(``on_disk``/``load``) in a memory-mapped ``.npy`` file, so the teacher's states on an
augmented split may outgrow the host's memory: pages are read and written through the page
cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

_NUMPY = {torch.float16: np.float16, torch.float32: np.float32}


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
        self._map: np.memmap | None = None

    @classmethod
    def on_disk(
        cls,
        path: Path,
        name: str,
        lengths: Sequence[int],
        hidden: int,
        dtype: torch.dtype = torch.float16,
        reopen: bool = False,
    ) -> TokenStore:
        """A store written straight into ``path/name.npy`` (memory-mapped), its lengths beside
        it; with ``reopen``, the rows an earlier, interrupted writer left there are kept."""
        file, total = path / f"{name}.npy", int(sum(lengths))
        shape = (total, hidden)
        if reopen and file.is_file():
            arr = np.load(file, mmap_mode="r+")
            if arr.shape != shape or arr.dtype != _NUMPY[dtype]:
                raise ValueError(f"{file} holds {arr.dtype}{arr.shape}, expected {shape}")
        else:
            arr = np.lib.format.open_memmap(file, mode="w+", dtype=_NUMPY[dtype], shape=shape)
        np.save(path / f"{name}.lengths.npy", np.asarray(lengths, dtype=np.int64))
        store = cls(lengths, hidden, data=torch.from_numpy(arr))
        store._map = arr
        return store

    @classmethod
    def load(cls, path: Path, name: str) -> TokenStore:
        """Map a store that ``on_disk`` wrote; changes stay in this process (copy on write)."""
        arr = np.load(path / f"{name}.npy", mmap_mode="c")
        lengths = np.load(path / f"{name}.lengths.npy").tolist()
        return cls(lengths, arr.shape[1], data=torch.from_numpy(arr))

    @staticmethod
    def saved(path: Path, name: str) -> bool:
        return (path / f"{name}.npy").is_file() and (path / f"{name}.lengths.npy").is_file()

    def flush(self) -> None:
        """Write the rows set so far to the store's file (a no-op in memory)."""
        if self._map is not None:
            self._map.flush()

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
