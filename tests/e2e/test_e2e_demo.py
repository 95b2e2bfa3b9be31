"""The README's main job, `shoal demo`, end to end at a tiny size: fine-tune the packaged
all-MiniLM-L6-v2 on the embedded tweets, distil, serve both, compare."""

from __future__ import annotations

import json

from shoal.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path):
    config = DemoConfig(
        out=str(tmp_path / "demo"),
        train_examples=64,
        eval_examples=32,
        students=2,
        max_length=32,
        serve_seconds=2.0,
        burst_rate=8.0,
    )
    report = run_demo(config)
    assert 0.0 <= report["teacher_test"]["accuracy"] <= 1.0
    assert [row["k"] for row in report["cohort_prefix"]] == [1, 2]
    assert set(report["served"]) == {"shoal", "teacher-torch"}
    for summary in report["served"].values():
        assert summary["requests"] > 0
        assert (
            summary["answered"] + summary["rejected"] + summary["timed_out"] == summary["requests"]
        )
        assert summary["errors"] == 0
    saved = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert saved["cohort_prefix"] == report["cohort_prefix"]
