"""``shoal bench kernels`` on a tiny teacher: every case runs, agrees, and is summarised."""

from __future__ import annotations

import pytest
import torch

from shoal.bench.kernels import KernelsConfig, run_kernels, write


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_kernels_bench_measures_every_in_process_case(tiny_teacher, tmp_path, one_thread):
    data = tmp_path / "sst2.tsv"
    data.write_text("sentence\tlabel\n" + "".join("good movie bad plot\t1\n" for _ in range(8)))
    config = KernelsConfig(
        out_dir=str(tmp_path),
        teacher=str(tiny_teacher),
        n_students=2,
        iters=2,
        large_iters=1,
        warmup=1,
        large_batch=4,
        data=str(data),
        threads=(1,),
        multiprocess=False,
    )
    result = run_kernels(config)
    systems = {(c["system"], c["batch"], c["k"]) for c in result["cases"]}
    for b in (1, 4):
        for k in (1, 2):
            assert ("cohort fused", b, k) in systems
            assert ("cohort ONNX Runtime", b, k) in systems
            assert ("cohort ONNX Runtime int8", b, k) in systems
        assert ("teacher HF eager", b, None) in systems
        assert ("teacher ONNX Runtime", b, None) in systems
        assert ("teacher ONNX Runtime int8", b, None) in systems
    assert result["inputs"]["length"] == 6  # [CLS] 4 words [SEP]
    row = result["summary"]["threads_1"]
    for key in (
        "overhead_ratio",
        "speedup_vs_hf_eager",
        "ort_speedup_vs_hf_eager",
        "ort_int8_speedup_vs_hf_eager",
    ):
        assert key in row
    # int8 is not set against the fp32 matmul peak (it can exceed it)
    assert "ort_int8_overhead_ratio" not in row and "ort_int8_large_batch_peak_frac" not in row
    hf = next(c for c in result["cases"] if c["system"] == "teacher HF eager" and c["batch"] == 1)
    ort2 = next(
        c
        for c in result["cases"]
        if c["system"] == "cohort ONNX Runtime" and c["batch"] == 1 and c["k"] == 2
    )
    assert row["ort_speedup_vs_hf_eager"] == pytest.approx(hf["p50_ms"] / ort2["p50_ms"])
    # int8 students are set against the int8 teacher
    t8, c8 = (
        next(
            c
            for c in result["cases"]
            if c["system"] == name and c["batch"] == 1 and c["k"] in (None, 2)
        )
        for name in ("teacher ONNX Runtime int8", "cohort ONNX Runtime int8")
    )
    assert row["ort_int8_speedup_vs_onnxruntime"] == pytest.approx(t8["p50_ms"] / c8["p50_ms"])
    js, png = write(result, tmp_path)
    assert js.stat().st_size > 0 and png.read_bytes()[:4] == b"\x89PNG"
