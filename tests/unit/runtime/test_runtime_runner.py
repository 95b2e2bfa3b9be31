"""LocalRunner: the fused path against a float64 one-by-one reference, bf16, partial sums."""

from __future__ import annotations

import json

import pytest
import torch

from shoal.errors import ConfigError
from shoal.models.cohort import ShoalModel
from shoal.serve.runtime import LocalRunner, ProfileConfig, Runtime, RuntimeConfig
from shoal.serve.runtime.allocation import allocate, workers_for
from shoal.serve.runtime.runner import bf16_cpu_supported


def _args(batch):
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def _reference(model: ShoalModel, batch, k: int) -> torch.Tensor:
    """Float64, every student separately, every token in every layer: obviously correct."""
    m64 = ShoalModel(model.config).double().eval()
    m64.load_state_dict(model.state_dict())
    with torch.no_grad():
        return m64(*_args(batch), k).logits


def test_fused_equals_the_reference_for_every_k(cohort, batch):
    runner = LocalRunner(cohort)
    for k in range(1, cohort.n_students + 1):
        ref = _reference(cohort, batch, k)
        with torch.no_grad():
            naive = cohort(*_args(batch), k).logits.double()  # fp32 one-by-one
        out = runner.run(*_args(batch), k)
        assert out.dtype == torch.float32 and out.shape == (4, 2) and out.device.type == "cpu"
        tol = 4 * (naive - ref).abs().max().item() + 1e-6  # the error of a naive fp32 path
        assert (out.double() - ref).abs().max().item() <= tol, k


def test_numpy_and_torch_inputs_agree(cohort, batch):
    runner = LocalRunner(cohort)
    as_np = [t.numpy() for t in _args(batch)]
    assert torch.equal(runner.run(*as_np, 3), runner.run(*_args(batch), 3))
    assert torch.equal(
        runner.run(batch["input_ids"], None, None, 2),
        runner.run(batch["input_ids"], torch.ones_like(batch["input_ids"]), None, 2),
    )


@pytest.mark.skipif(not bf16_cpu_supported(), reason="this CPU has no native bf16")
def test_bf16_is_close_to_fp32(cohort, batch):
    fp32, bf16 = LocalRunner(cohort), LocalRunner(cohort, dtype="bfloat16")
    for k in range(1, cohort.n_students + 1):
        a, b = fp32.run(*_args(batch), k), bf16.run(*_args(batch), k)
        assert b.dtype == torch.float32
        # bf16 keeps 8 mantissa bits: about 2^-8 relative error per op, a few ops deep.
        assert (a - b).abs().max().item() <= 0.05 * a.abs().max().item() + 0.02


def test_partial_sums_over_any_allocation_add_up_to_the_full_run(cohort, batch):
    runner = LocalRunner(cohort)
    n = cohort.n_students
    for workers in (1, 2, 3, 4):
        alloc = allocate(n, workers)
        for k in range(1, n + 1):
            plan = workers_for(k, alloc)
            total = sum(
                runner.partial_sum(*_args(batch), students, k) for students in plan.values()
            )
            width = (
                cohort.config.num_labels
                if cohort.config.head_per_student
                else cohort.config.hidden_size
            )
            assert total.shape == (4, width)
            torch.testing.assert_close(
                runner.finish(total), runner.run(*_args(batch), k), rtol=1e-5, atol=1e-6
            )


def test_a_block_stack_serves_its_prefixes(cohort, batch):
    runner = LocalRunner(cohort)
    runner.warmup((2, 3))
    runner.partial_sum(*_args(batch), (2,), 3)
    runner.partial_sum(*_args(batch), (2, 3), 4)
    assert list(runner._stacks) == [(2, 3)]


def test_bad_students_and_k_are_refused(cohort, batch):
    runner = LocalRunner(cohort)
    with pytest.raises(ConfigError, match="not all in the prefix k=2"):
        runner.partial_sum(*_args(batch), (1, 2), 2)
    with pytest.raises(ConfigError, match="distinct, ascending"):
        runner.partial_sum(*_args(batch), (3, 1), 4)
    with pytest.raises(ConfigError, match="k=5 is outside 1..4"):
        runner.run(*_args(batch), 5)
    with pytest.raises(ConfigError, match="dtype='int8'"):
        LocalRunner(cohort, dtype="int8")


def test_runtime_in_process_profiles_once_and_caches(cohort, batch, tmp_path):
    cohort.save_pretrained(tmp_path / "cohort")
    grid = ProfileConfig(ks=(1, 4), batches=(1, 2), lengths=(4, 8), repeats=1)
    cache = tmp_path / "cache"
    with Runtime.start(tmp_path / "cohort", RuntimeConfig(), profile=grid, cache_dir=cache) as rt:
        assert rt.cost_model is not None and rt.cost_model.ks == (1, 4)
        assert len(rt.cost_model.points) == 8
        torch.testing.assert_close(
            rt.execute(*_args(batch), 3), LocalRunner(cohort).run(*_args(batch), 3)
        )
        assert [s.alive for s in rt.health()] == [True]
    files = list(cache.glob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["layout"]["workers"] == 0 and record["machine"]["torch"] == torch.__version__
    # A second start on the same machine, model and layout reads the cache.
    record["cost_model"]["points"] = [
        [k, b, n, 0.5] for k, b, n, _ in record["cost_model"]["points"]
    ]
    files[0].write_text(json.dumps(record))
    with Runtime.start(tmp_path / "cohort", RuntimeConfig(), profile=grid, cache_dir=cache) as rt:
        assert rt.cost_model is not None and rt.cost_model.cost(2, 1, 4) == 0.5


def test_onnxruntime_backend_equals_the_reference_for_every_k(cohort, batch):
    runner = LocalRunner(cohort, backend="onnxruntime")
    for k in range(1, cohort.n_students + 1):
        ref = _reference(cohort, batch, k)
        with torch.no_grad():
            naive = cohort(*_args(batch), k).logits.double()
        out = runner.run(*_args(batch), k)
        assert out.dtype == torch.float32 and out.shape == (4, 2)
        tol = 4 * (naive - ref).abs().max().item() + 1e-5
        assert (out.double() - ref).abs().max().item() <= tol, k
    # other batch sizes and lengths than the export's sample (dynamic axes)
    one = {name: t[:1, :3] for name, t in batch.items()}
    torch.testing.assert_close(
        runner.run(*_args(one), 2), LocalRunner(cohort).run(*_args(one), 2), rtol=1e-4, atol=1e-5
    )


def test_onnxruntime_partial_sums_add_up(cohort, batch):
    runner = LocalRunner(cohort, backend="onnxruntime")
    plan = workers_for(4, allocate(cohort.n_students, 2))
    total = sum(runner.partial_sum(*_args(batch), students, 4) for students in plan.values())
    torch.testing.assert_close(
        runner.finish(total), LocalRunner(cohort).run(*_args(batch), 4), rtol=1e-4, atol=1e-5
    )


def test_int8_students_are_quantized_and_close_to_fp32(cohort, batch):
    import onnx

    from shoal.serve.runtime.ort import export_student, quantize_int8

    graph = quantize_int8(export_student(cohort.students[0], cohort.config.hidden_size))
    ops = {node.op_type for node in onnx.load_from_string(graph).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    fp32, int8 = LocalRunner(cohort), LocalRunner(cohort, backend="onnxruntime", dtype="int8")
    assert int8.quantized and int8.dtype == torch.float32  # the rest of the cohort stays fp32
    for k in range(1, cohort.n_students + 1):
        a, b = fp32.run(*_args(batch), k), int8.run(*_args(batch), k)
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert not torch.equal(a, b)  # the quantized graphs ran
        # int8 weights and activations: under 1% error per matmul, a few matmuls deep (this
        # cohort measures 0.05%).
        assert (a - b).abs().max().item() <= 0.02 * a.abs().max().item(), k


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"backend": "tvm"}, "backend='tvm' is unknown"),
        ({"backend": "onnxruntime", "dtype": "bfloat16"}, "runs float32 or int8 on the CPU"),
        ({"dtype": "int8"}, "add --backend onnxruntime"),
        ({"dtype": "fp16"}, "dtype='fp16' is unknown"),
    ],
)
def test_bad_backends_are_refused(cohort, kw, match):
    if kw.get("dtype") == "bfloat16" and not bf16_cpu_supported():
        pytest.skip("this CPU has no native bf16")
    with pytest.raises(ConfigError, match=match):
        LocalRunner(cohort, **kw)
    with pytest.raises(ConfigError, match=match):
        RuntimeConfig(**kw)
