"""GPU paths: fused on CUDA (fp32 and bf16) and worker processes sharing one GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from shoal.serve.runtime import LocalRunner, RuntimeConfig, WorkerPool

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _args(batch):
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def test_cuda_fused_equals_cpu_for_every_k(cohort, batch):
    cpu = LocalRunner(cohort)
    expected = [cpu.run(*_args(batch), k) for k in range(1, cohort.n_students + 1)]
    gpu = LocalRunner(copy.deepcopy(cohort), "cuda:0")
    for k, want in enumerate(expected, start=1):
        got = gpu.run(*_args(batch), k)
        assert got.device.type == "cpu" and got.dtype == torch.float32
        # TF32 may be on for CUDA matmuls: ~1e-3 relative error per product.
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)


def test_cuda_bf16_is_close(cohort, batch):
    want = LocalRunner(cohort).run(*_args(batch), cohort.n_students)
    gpu = LocalRunner(copy.deepcopy(cohort), "cuda:0", "bfloat16")
    got = gpu.run(*_args(batch), cohort.n_students)
    assert (got - want).abs().max().item() <= 0.05 * want.abs().max().item() + 0.02


def test_two_processes_share_one_gpu(cohort, batch, tmp_path):
    cohort.save_pretrained(tmp_path / "cohort")
    want = LocalRunner(cohort).run(*_args(batch), cohort.n_students)
    config = RuntimeConfig(device="cuda:0", workers=2, procs_per_gpu=2, health_interval_s=0)
    with WorkerPool(tmp_path / "cohort", config) as pool:
        assert [s.device for s in pool.status()] == ["cuda:0", "cuda:0"]
        got = pool.run(*_args(batch), cohort.n_students)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)
