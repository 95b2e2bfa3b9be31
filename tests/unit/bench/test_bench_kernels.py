"""``shoal bench kernels`` on a tiny teacher: every case runs, agrees, and is summarised."""

from __future__ import annotations

import pytest

from shoal.bench.offline import run_kernels, summarize, write


def test_kernels_bench_measures_every_in_process_case(tiny_kernels_config, tmp_path):
    config = tiny_kernels_config(multiprocess=False)
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


def _case(system: str, k: int, p50: float, flops: float, cores_used: int | None = None) -> dict:
    case = {"system": system, "batch": 1, "k": k, "threads": 1, "p50_ms": p50, "flops": flops}
    return case | ({"cores_used": cores_used} if cores_used else {})


def test_worker_layouts_set_each_case_against_the_peak_of_the_cores_it_kept_busy():
    peaks = {"fp32_t1": 100.0, "fp32_t2": 200.0}  # GFLOP/s
    pool = "cohort 2 proc x 1 thr"
    cases = [
        # one student on one worker: 1e8 FLOPs over 100 GFLOP/s = 1 ms floor, 3 ms above it
        _case(pool, 1, 4.0, 1e8, cores_used=1),
        # both students side by side on two workers: 2e8 over 200 GFLOP/s = 1 ms floor
        _case(pool, 2, 4.6, 2e8, cores_used=2),
        {**_case("teacher HF eager", 0, 23.0, 5e8), "k": None, "threads": 2},
        {**_case("teacher ONNX Runtime", 0, 9.2, 5e8), "k": None, "threads": 2},
    ]
    row = summarize(cases, peaks, n=2, large=64)["multiprocess_ratios"][pool]
    assert row["overhead_ms_one"] == pytest.approx(3.0)
    assert row["overhead_ms_full"] == pytest.approx(3.6)
    assert row["overhead_ratio"] == pytest.approx(1.2)
    assert row["speedup_vs_hf_eager"] == pytest.approx(5.0)
    assert row["speedup_vs_onnxruntime"] == pytest.approx(2.0)


def test_worker_layouts_without_a_peak_for_their_cores_get_no_overhead_ratio():
    pool = "cohort 4 proc x 1 thr"
    cases = [_case(pool, 1, 4.0, 1e8, cores_used=1), _case(pool, 4, 5.0, 4e8, cores_used=4)]
    row = summarize(cases, {"fp32_t1": 100.0}, n=4, large=64)["multiprocess_ratios"][pool]
    assert "overhead_ratio" not in row


def test_results_name_the_commit_given_by_the_environment(monkeypatch):
    """A copy of the tree on another machine may carry a stale .git: the commit given in
    $SHOAL_GIT_COMMIT is the one recorded."""
    from shoal.provenance import git_commit as _git_commit

    monkeypatch.delenv("SHOAL_GIT_COMMIT", raising=False)
    head = _git_commit()
    assert head is None or len(head.removesuffix("-dirty")) == 40
    monkeypatch.setenv("SHOAL_GIT_COMMIT", "0123abc")
    assert _git_commit() == "0123abc"


def test_inputs_are_synthetic_without_data_and_a_missing_file_is_named(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from shoal.bench.offline.inputs import equal_length_batches
    from shoal.errors import DataError

    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    rows, big, source = equal_length_batches(tok, "", None, 4)
    assert source == "synthetic (25 tokens)"
    assert rows[0]["input_ids"].shape == (1, 25) and big["input_ids"].shape == (4, 25)
    with pytest.raises(DataError, match="missing.tsv does not exist"):
        equal_length_batches(tok, str(tmp_path / "missing.tsv"), None, 4)


def test_a_length_no_sentence_reaches_is_refused_by_name(tiny_teacher, tmp_path):
    from transformers import AutoTokenizer

    from shoal.bench.offline.inputs import equal_length_batches
    from shoal.errors import DataError

    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    data = tmp_path / "test.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\na bad one\t0\n")
    rows, _, source = equal_length_batches(tok, str(data), 4, 2)
    assert rows[0]["input_ids"].shape == (1, 4) and "of 4 tokens" in source
    with pytest.raises(DataError, match="--length 5 or less"):
        equal_length_batches(tok, str(data), 400, 2)
