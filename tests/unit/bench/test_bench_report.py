"""Summary numbers on hand-made records, and that every plot and the report get written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shoal.bench.records import MetricSample, Record
from shoal.bench.report import (
    load_point,
    padding_ratio,
    plot_accuracy_vs_latency,
    plot_latency_cdf,
    plot_latency_vs_load,
    plot_timeline,
    summarize,
    write_json,
    write_markdown,
)

PNG_MAGIC = b"\x89PNG"


def _rec(
    i: int,
    latency: float,
    status: int | str = 200,
    predicted: int | None = 1,
    gold: int = 1,
    k: int | None = 2,
) -> Record:
    offset = i * 0.1
    return Record(
        index=i,
        offset_s=offset,
        start_s=offset,
        end_s=offset + latency,
        latency_s=latency,
        status=status,
        predicted=predicted if status == 200 else None,
        gold=gold,
        queue_ms=1.0,
        inference_ms=2.0,
        students_used=k if status == 200 else None,
    )


@pytest.fixture
def records() -> list[Record]:
    # Ten answers with latencies 10..100 ms (8 right), one 429, one timeout, one 500.
    out = [
        _rec(i, 0.01 * (i + 1), predicted=1 if i < 8 else 0, k=2 if i % 2 else 4) for i in range(10)
    ]
    out += [
        _rec(10, 0.001, status=429),
        _rec(11, 1.0, status="timeout"),
        _rec(12, 0.002, status=500),
    ]
    return out


@pytest.fixture
def timeline() -> list[MetricSample]:
    return [
        MetricSample(0.0, 4, 0, 5000, 1000),
        MetricSample(0.5, 2, 7, 5600, 1100),
        MetricSample(1.0, 3, 1, 6100, 1300),
    ]


def test_counts_percentiles_goodput_and_accuracy(records, timeline) -> None:
    s = summarize(records, latency_target_s=0.05, timeline=timeline, duration_s=1.3)
    lat = np.arange(1, 11) * 10.0
    assert (s["requests"], s["answered"], s["rejected"], s["timed_out"], s["errors"]) == (
        13,
        10,
        1,
        1,
        1,
    )
    assert s["status_counts"] == {"200": 10, "429": 1, "500": 1, "timeout": 1}
    for q in (50, 95, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(lat, q))
    assert s["mean_ms"] == pytest.approx(55.0)
    assert s["accuracy"] == pytest.approx(0.8)
    assert s["offered_rate_rps"] == pytest.approx(13 / 1.3)
    # Window: the later of the sending window (1.3 s) and the last answer (0.9 + 0.1 s).
    assert s["throughput_rps"] == pytest.approx(10 / 1.3)
    assert s["goodput_rps"] == pytest.approx(5 / 1.3)  # 10..50 ms are within 50 ms
    assert s["slo_attainment"] == pytest.approx(5 / 13)
    assert s["mean_students_used"] == pytest.approx(3.0)
    # 1100 positions computed, 300 of them real tokens.
    assert s["padding_ratio"] == pytest.approx((1100 - 300) / 1100)
    assert s["mean_active_students"] == pytest.approx(3.0)
    assert s["max_queue_depth"] == 7


def test_window_extends_to_the_last_answer_and_unmapped_label_is_wrong() -> None:
    recs = [_rec(0, 2.0), _rec(1, 0.5, predicted=None)]
    s = summarize(recs, latency_target_s=1.0)
    assert s["offered_rate_rps"] == pytest.approx(2 / 0.1)  # sending window = last offset
    assert s["throughput_rps"] == pytest.approx(2 / 2.0)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["padding_ratio"] is None and s["mean_active_students"] is None


def test_nothing_answered_gives_nulls() -> None:
    s = summarize([_rec(0, 0.1, status=429), _rec(1, 0.1, status=429)], latency_target_s=0.1)
    assert s["answered"] == 0 and s["p99_ms"] is None and s["accuracy"] is None
    assert s["rejected"] == 2 and s["goodput_rps"] == 0 and s["throughput_rps"] == 0
    json.dumps(s)  # JSON-ready as it is


def test_padding_ratio_needs_two_samples_with_both_counters() -> None:
    assert padding_ratio([MetricSample(0, 1, 0, 10, 10)]) is None
    assert padding_ratio([MetricSample(0, 1, 0, None, 10), MetricSample(1, 1, 0, 5, 20)]) is None


def test_write_json_handles_records(tmp_path, records) -> None:
    path = write_json({"records": records[:2], "path": tmp_path}, tmp_path / "out" / "r.json")
    data = json.loads(path.read_text())
    assert data["records"][0]["latency_s"] == pytest.approx(0.01)
    assert data["path"] == str(tmp_path)


def test_plots_and_markdown_are_written(tmp_path, records, timeline) -> None:
    s = summarize(records, 0.05, timeline=timeline)
    other = summarize(records[:5], 0.05)
    summaries = {"shoal": s, "teacher": other}
    plots = {
        "Latency CDF": plot_latency_cdf(
            {"shoal": records, "teacher": records[:5]},
            tmp_path / "plots" / "cdf.png",
            latency_target_s=0.05,
        ),
        "Latency vs load": plot_latency_vs_load(
            {"shoal": [load_point(s), (20.0, 5.0, 9.0)], "teacher": [load_point(other)]},
            tmp_path / "plots" / "load.png",
            latency_target_s=0.05,
        ),
        "Through a burst": plot_timeline(
            timeline, records, tmp_path / "plots" / "timeline.png", bin_s=0.25
        ),
        "Timeline without metrics": plot_timeline([], records, tmp_path / "plots" / "t2.png"),
        "Accuracy vs latency": plot_accuracy_vs_latency(summaries, tmp_path / "plots" / "acc.png"),
    }
    for png in plots.values():
        assert png.read_bytes()[:4] == PNG_MAGIC
    md = write_markdown(
        summaries, plots, tmp_path / "report.md", command="shoal bench serve", machine="test box"
    ).read_text()
    assert "![Latency CDF](plots/cdf.png)" in md
    assert "shoal bench serve" in md and "test box" in md
    row = next(line for line in md.splitlines() if line.startswith("| shoal"))
    assert "80.00%" in row and "| 1 | 1 | 1 |" in row


def test_serve_report_plots_a_timeline_for_every_pruning_system(tmp_path, records, timeline):
    from types import SimpleNamespace

    from shoal.bench.records import RunResult
    from shoal.bench.serve_bench import PRUNING_SYSTEMS, _write_report

    names = ("shoal-onnx", "shoal-bf16")
    s = summarize(records, 0.05, timeline=timeline)
    results = {"systems": {n: {"low_load": s, "sustained_burst_rate": 90.0} for n in names}}
    run = RunResult("http://x", "now", 1.0, 1.0, records, timeline, metrics_available=True)
    config = SimpleNamespace(latency_target_ms=50.0, data="d/sst2")
    _write_report(config, results, {"shoal-onnx": records}, {}, dict.fromkeys(names, run), tmp_path)
    assert set(names) <= set(PRUNING_SYSTEMS)
    for name in names:
        assert (tmp_path / f"timeline_{name}.png").read_bytes().startswith(PNG_MAGIC)
        assert f"timeline_{name}.png" in (tmp_path / "bench.md").read_text()
    assert not (tmp_path / "timeline_shoal.png").exists()
    md = (tmp_path / "bench.md").read_text()
    assert (tmp_path / "story.png").read_bytes().startswith(PNG_MAGIC)
    assert md.index("story.png") < md.index("latency_cdf.png")  # the story leads


def test_story_plot_takes_sweeps_with_and_without_students(tmp_path, records, timeline) -> None:
    from shoal.bench.report import plot_story

    s = summarize(records, 0.05, timeline=timeline)
    no_k = {**summarize(records[:5], 0.05), "mean_students_used": None}
    png = plot_story(
        {"shoal": [s, {**s, "offered_rate_rps": 50.0}], "teacher": [no_k], "empty": []},
        tmp_path / "story.png",
        0.05,
        pruning=["shoal", "missing"],
    )
    assert png.read_bytes().startswith(PNG_MAGIC)
