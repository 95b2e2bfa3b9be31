"""Measured batch latency, ``cost(k, batch, length)``, interpolated from a profile.

The profile is taken at start-up on the actual machine: for each measured number of students
``k``, a full grid of batch sizes x lengths. Between grid points the cost is bilinear in (batch,
length) and linear in k; beyond the grid it extrapolates linearly from the nearest two points
(latency is close to affine in batch and length once the device is busy), never below zero.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import ConfigError

Point = tuple[int, int, int, float]
"""One measurement: (k, batch_size, padded_length, seconds)."""


@dataclass(frozen=True)
class _Grid:
    """Measurements for one k: ``table[i][j]`` is the cost at ``batches[i]``, ``lengths[j]``."""

    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    table: tuple[tuple[float, ...], ...]


def _bracket(xs: Sequence[int], x: float) -> tuple[int, int, float]:
    """Indices ``i0, i1`` and weight ``w`` so that ``f(x) ~ (1-w) f[i0] + w f[i1]``.

    Outside the range the end pair is used with ``w < 0`` or ``w > 1`` (linear extrapolation);
    a single point gives a constant.
    """
    if len(xs) == 1:
        return 0, 0, 0.0
    i1 = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    i0 = i1 - 1
    return i0, i1, (x - xs[i0]) / (xs[i1] - xs[i0])


def _lerp(a: float, b: float, w: float) -> float:
    # This form is exact at w = 0 and w = 1, so grid points are reproduced bit for bit.
    return (1.0 - w) * a + w * b


@dataclass(frozen=True)
class CostModel:
    """Latency of one batch as a function of active students, batch size and length."""

    points: tuple[Point, ...]
    """Measurements ``(k, batch_size, padded_length, seconds)``; for each k they must cover a
    full grid of batch sizes x lengths."""
    padded: bool = True
    """True when the runner pads each batch to its longest item, so ``length`` is the padded
    length; False for a packing runner, where ``length`` is the mean item length."""
    _grids: dict[int, _Grid] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("cost model has no points; profile at least one (k, batch, length)")
        by_k: dict[int, dict[tuple[int, int], float]] = {}
        for k, batch, length, seconds in self.points:
            if min(k, batch, length) < 1 or not (math.isfinite(seconds) and seconds >= 0):
                raise ConfigError(
                    f"bad cost point (k={k}, batch={batch}, length={length}, seconds={seconds}): "
                    "k, batch and length must be >= 1 and seconds finite and >= 0"
                )
            cell = by_k.setdefault(k, {})
            if (batch, length) in cell:
                raise ConfigError(f"duplicate cost point k={k}, batch={batch}, length={length}")
            cell[(batch, length)] = float(seconds)
        grids: dict[int, _Grid] = {}
        for k, cell in by_k.items():
            batches = tuple(sorted({b for b, _ in cell}))
            lengths = tuple(sorted({n for _, n in cell}))
            if len(cell) != len(batches) * len(lengths):
                raise ConfigError(
                    f"cost points for k={k} are not a full grid: {len(cell)} points for "
                    f"{len(batches)} batch sizes x {len(lengths)} lengths; profile every pair"
                )
            table = tuple(tuple(cell[(b, n)] for n in lengths) for b in batches)
            grids[k] = _Grid(batches, lengths, table)
        # Frozen dataclass: the derived lookup table is set once, here.
        object.__setattr__(self, "_grids", dict(sorted(grids.items())))

    @property
    def ks(self) -> tuple[int, ...]:
        """The measured numbers of students, ascending."""
        return tuple(self._grids)

    def _cost_at_k(self, grid: _Grid, batch: float, length: float) -> float:
        b0, b1, wb = _bracket(grid.batches, batch)
        l0, l1, wl = _bracket(grid.lengths, length)
        t = grid.table
        return _lerp(_lerp(t[b0][l0], t[b0][l1], wl), _lerp(t[b1][l0], t[b1][l1], wl), wb)

    def cost(self, k: int, batch: int, length: float) -> float:
        """Seconds to run one batch of ``batch`` items at ``length`` tokens with ``k`` students."""
        ks = self.ks
        k0, k1, wk = _bracket(ks, k)
        c0 = self._cost_at_k(self._grids[ks[k0]], batch, length)
        c1 = self._cost_at_k(self._grids[ks[k1]], batch, length)
        return max(0.0, _lerp(c0, c1, wk))

    def throughput(self, k: int, length: float, batch: int) -> float:
        """Requests per second when running batches of ``batch`` items back to back."""
        seconds = self.cost(k, batch, length)
        return math.inf if seconds == 0 else batch / seconds

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``json.dump``."""
        return {"padded": self.padded, "points": [list(p) for p in self.points]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CostModel:
        """Inverse of ``to_json``; raises ``ConfigError`` on malformed input."""
        try:
            points = tuple((int(k), int(b), int(n), float(s)) for k, b, n, s in data["points"])
            padded = bool(data.get("padded", True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"malformed cost model JSON ({exc!r}); expected "
                '{"padded": bool, "points": [[k, batch, length, seconds], ...]}'
            ) from exc
        return cls(points=points, padded=padded)
