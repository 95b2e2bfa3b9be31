"""Cost model: exact on the grid, bilinear/linear between, linear beyond, JSON round trip."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable

import pytest

from shoal.errors import ConfigError
from shoal.serve.costmodel import CostModel

KS = (1, 2, 4)
BATCHES = (1, 8, 32)
LENGTHS = (16, 64, 256)


def affine(k: float, b: float, n: float) -> float:
    """Bilinear in (batch, length) for each k and linear in k, so interpolation is exact."""
    return 0.001 + 0.0005 * k + 0.00002 * k * b + 0.00001 * n + 0.000001 * k * b * n


def model(
    fn: Callable[[float, float, float], float] = affine,
    ks: tuple[int, ...] = KS,
    batches: tuple[int, ...] = BATCHES,
    lengths: tuple[int, ...] = LENGTHS,
) -> CostModel:
    points = tuple((k, b, n, fn(k, b, n)) for k, b, n in itertools.product(ks, batches, lengths))
    return CostModel(points=points)


def test_exact_on_grid_points() -> None:
    rng = random.Random(0)
    # Irregular values: exactness must not depend on the function being smooth.
    points = tuple(
        (k, b, n, rng.uniform(0.001, 0.1)) for k, b, n in itertools.product(KS, BATCHES, LENGTHS)
    )
    cm = CostModel(points=points)
    for k, b, n, seconds in points:
        assert cm.cost(k, b, n) == seconds


@pytest.mark.parametrize("seed", range(20))
def test_interpolation_reproduces_bilinear_function(seed: int) -> None:
    rng = random.Random(seed)
    cm = model()
    k = rng.randint(1, 4)
    b = rng.randint(1, 32)
    n = rng.uniform(16, 256)
    assert cm.cost(k, b, n) == pytest.approx(affine(k, b, n), rel=1e-12)


def test_linear_between_measured_k() -> None:
    cm = model(fn=lambda k, b, n: 0.01 * k * k, ks=(1, 3))  # 0.01 at k=1, 0.09 at k=3
    assert cm.cost(2, 8, 64) == pytest.approx(0.05)


@pytest.mark.parametrize(("k", "b", "n"), [(8, 8, 64), (2, 128, 64), (2, 8, 1024), (6, 100, 900)])
def test_linear_extrapolation_beyond_grid(k: int, b: int, n: int) -> None:
    assert model().cost(k, b, n) == pytest.approx(affine(k, b, n), rel=1e-12)


def test_never_negative() -> None:
    cm = model(fn=lambda k, b, n: max(0.0, 0.1 - 0.001 * b), batches=(1, 32))
    assert cm.cost(1, 1000, 64) == 0.0
    assert cm.throughput(1, 64, 1000) == float("inf")


def test_monotone_sanity() -> None:
    cm = model()
    for k, b, n in itertools.product(range(1, 7), range(1, 48, 3), range(1, 400, 23)):
        c = cm.cost(k, b, n)
        assert c > 0
        assert cm.cost(k + 1, b, n) >= c
        assert cm.cost(k, b + 1, n) >= c
        assert cm.cost(k, b, n + 1) >= c
        assert cm.throughput(k, n, b) == pytest.approx(b / c)


def test_single_point_is_constant() -> None:
    cm = CostModel(points=((2, 8, 64, 0.02),))
    assert cm.cost(1, 1, 1) == cm.cost(5, 100, 512) == 0.02
    assert cm.ks == (2,)


def test_json_round_trip() -> None:
    cm = CostModel(points=model().points, padded=False)
    back = CostModel.from_json(json.loads(json.dumps(cm.to_json())))
    assert back == cm and back.padded is False
    assert back.cost(3, 5, 77) == cm.cost(3, 5, 77)


@pytest.mark.parametrize(
    ("points", "match"),
    [
        ((), "no points"),
        (((1, 1, 16, 0.1), (1, 2, 32, 0.2)), "not a full grid"),
        (((1, 1, 16, 0.1), (1, 1, 16, 0.2)), "duplicate"),
        (((1, 1, 16, -0.1),), "bad cost point"),
        (((0, 1, 16, 0.1),), "bad cost point"),
    ],
)
def test_validation(points: tuple[tuple[int, int, int, float], ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CostModel(points=points)


@pytest.mark.parametrize("data", [{}, {"points": [[1, 2]]}, {"points": [["a", 1, 1, 1]]}])
def test_from_json_rejects_malformed(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CostModel.from_json(data)
