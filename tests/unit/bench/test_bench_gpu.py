"""``shoal bench gpu``: the summary's ratios, the plot, refusals; the run itself on a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from shoal.bench.offline.gpu import GpuBenchConfig, gpu_command, plot, summarize
from shoal.errors import ConfigError


def _rec(system: str, batch: int, k: int | None, p50: float) -> dict:
    return {"system": system, "batch": batch, "k": k, "p50_ms": p50}


def test_summary_ratios():
    records = [
        _rec("teacher HF eager", 8, None, 6.0),
        _rec("cohort fused", 8, 1, 1.5),
        _rec("cohort fused", 8, 2, 2.0),
        _rec("cohort one-by-one", 8, 2, 3.0),
        _rec("teacher HF eager bf16", 8, None, 4.0),
        _rec("cohort fused bf16", 8, 1, 1.0),
        _rec("cohort fused bf16", 8, 2, 1.6),
    ]
    fp32, bf16 = summarize(records, n=2)
    assert fp32 == {
        "batch": 8,
        "precision": "fp32",
        "teacher_p50_ms": 6.0,
        "cohort_p50_ms": 2.0,
        "speedup_vs_teacher": 3.0,
        "cohort_over_one_student": pytest.approx(4 / 3),
        "one_by_one_over_fused": 1.5,
    }
    assert bf16["precision"] == "bf16" and bf16["speedup_vs_teacher"] == 2.5
    assert "one_by_one_over_fused" not in bf16
    assert summarize(records[:1], n=2) == []  # no cohort measured at that size: no row


def test_plot_writes_a_png(tmp_path):
    result = {
        "cohort": {"n_students": 2, "student_layers": 2},
        "teacher": {"layers": 6},
        "machine": {"gpu": "test GPU"},
        "inputs": {"length": 25},
        "cases": [
            _rec("teacher HF eager", 1, None, 3.0),
            _rec("teacher HF eager", 8, None, 4.0),
            _rec("cohort fused", 1, 2, 1.0),
            _rec("cohort fused", 8, 2, 1.2),
            _rec("cohort fused", 8, 1, 0.9),
        ],
    }
    plot(result, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_settings_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match="batches"):
        GpuBenchConfig(batches=(0, 8))
    with pytest.raises(ConfigError, match="iters"):
        GpuBenchConfig(iters=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        gpu_command(device="cuda")
    with pytest.raises(ConfigError, match="bench kernels"):
        gpu_command(device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measures_every_system_on_the_gpu(tiny_teacher, tmp_path):
    data = tmp_path / "sst2.tsv"
    data.write_text("sentence\tlabel\n" + "".join("good movie bad plot\t1\n" for _ in range(8)))
    result = gpu_command(
        out_dir=str(tmp_path),
        teacher=str(tiny_teacher),
        n_students=2,
        batches=(1, 4),
        iters=3,
        warmup=1,
        data=str(data),
    )
    systems = {(c["system"], c["batch"], c["k"]) for c in result["cases"]}
    for b in (1, 4):
        assert ("teacher HF eager", b, None) in systems
        cohort = {("cohort fused", b, 1), ("cohort fused", b, 2), ("cohort one-by-one", b, 2)}
        assert cohort <= systems
    assert len(result["summary"]) >= 2
    assert json.loads((tmp_path / "gpu.json").read_text())["machine"]["gpu"]
    assert (tmp_path / "gpu.png").is_file()
