"""``shoal bench kernels`` with worker pools: one student and the full cohort per layout."""

from __future__ import annotations

import os

import pytest

from shoal.bench.offline import run_kernels


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for 2 workers")
def test_every_worker_layout_runs_one_student_and_the_full_cohort(tiny_kernels_config, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # no extra spin layout: 3 pools, not 4
    config = tiny_kernels_config(onnx=False)
    result = run_kernels(config)
    procs = [c for c in result["cases"] if " proc x " in c["system"]]
    cores = len(os.sched_getaffinity(0))
    layouts = {c["system"] for c in procs}
    assert layouts == {
        f"cohort 1 proc x {cores} thr",
        f"cohort {cores} proc x 1 thr",
        f"cohort {cores} proc x 1 thr ONNX Runtime",
    }
    for layout in layouts:
        runs = {(c["batch"], c["k"]): c for c in procs if c["system"] == layout}
        assert set(runs) == {(1, 1), (1, 2), (4, 2)}
        assert all(c["worker_compute_ms"] > 0 for c in runs.values())
    spread = {
        c["k"]: c["cores_used"] for c in procs if c["system"] == f"cohort {cores} proc x 1 thr"
    }
    assert spread == {1: 1, 2: 2}  # one student keeps one worker busy, the cohort both
    ratios = result["summary"]["multiprocess_ratios"]
    assert set(ratios) == layouts
