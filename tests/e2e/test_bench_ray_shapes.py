"""Both Ray Serve shapes of one cohort answer the same logits and get timed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.serve", reason="needs ray[serve]")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_fan_out_sums_to_the_whole_cohort_and_both_are_timed(e2e_cohort, tiny_data, tmp_path):
    from shoal.bench.ray_shapes import ShapesConfig, _groups, run_shapes

    result = run_shapes(
        ShapesConfig(
            cohort=str(e2e_cohort),
            data=str(tiny_data),
            out=str(tmp_path),
            batch=4,
            max_length=16,
            calls=4,
            concurrency=2,
            seconds=0.5,
        )
    )
    assert result["max_abs_logit_diff"] < 1e-5
    assert result["shard_students"] == [[0, 1], [2]]  # 3 students over 2 one-CPU shards
    for shape in ("whole", "fan_out"):
        assert set(result["shapes"][shape]) == {"p50_ms_b1", "p50_ms_b4", "requests_per_s_b1"}
        assert all(v > 0 for v in result["shapes"][shape].values())
    assert json.loads((tmp_path / "shapes.json").read_text())["students"] == 3
    assert _groups(2, 4) == [[0], [1]] and _groups(4, 2) == [[0, 1], [2, 3]]
