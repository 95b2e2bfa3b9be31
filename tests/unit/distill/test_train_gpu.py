"""Training and evaluation on a CUDA device (``--device``): the same results as on the CPU,
up to float rounding; skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from shoal.distill.distill import distill
from shoal.distill.finetune import FinetuneConfig, finetune
from shoal.distill.trainer import TrainConfig
from shoal.evaluation import evaluate_model
from shoal.models.cohort import ShoalModel
from tiny_fixtures import tiny_distill_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _exact_matmuls():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("distill_from", [False, True])
def test_finetune_on_cuda_matches_the_cpu(tiny_teacher, tiny_data, tmp_path, distill_from):
    def run(device: str) -> dict:
        return finetune(
            FinetuneConfig(
                model=str(tiny_teacher),
                data=str(tiny_data),
                out=str(tmp_path / device),
                max_length=32,
                device=device,
                distill_from=str(tiny_teacher) if distill_from else None,
                train=TrainConfig(epochs=1, lr=1e-3, batch_size=8, evals_per_epoch=1),
            )
        )

    cpu, gpu = run("cpu"), run("cuda")
    assert gpu["device"] == "cuda:0" and cpu["device"] == "cpu"
    assert gpu["steps"] == cpu["steps"]
    for a, b in zip(cpu["history"], gpu["history"]):
        # Adam turns rounding-level gradient differences into lr-sized steps: loose bounds
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2, abs=1e-3)
    from transformers import AutoModelForSequenceClassification  # same weights up to rounding

    wa = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cpu").state_dict()
    wb = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cuda").state_dict()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-2, atol=1e-2, msg=name)


@pytest.mark.parametrize("method", ["stack", "average"])
def test_distill_on_cuda_matches_the_cpu(tiny_teacher, tiny_data, tmp_path, method):
    runs = {
        d: distill(
            tiny_distill_config(
                tiny_teacher, tiny_data, tmp_path / d, device=d, method=method, n_students=2
            )
        )
        for d in ("cpu", "cuda")
    }
    a = ShoalModel.from_pretrained(tmp_path / "cpu").state_dict()
    b = ShoalModel.from_pretrained(tmp_path / "cuda").state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-2, atol=1e-2, msg=name)
    for row_a, row_b in zip(runs["cpu"]["prefix_accuracy"], runs["cuda"]["prefix_accuracy"]):
        assert row_b["test_accuracy"] == pytest.approx(row_a["test_accuracy"], abs=0.05)


@pytest.mark.parametrize(
    "kw", [{"method": "boost", "joint_epochs": 1.0}, {"method": "stack", "space": "logits"}]
)
def test_joint_phase_and_logit_space_run_on_cuda(tiny_teacher, tiny_data, tmp_path, kw):
    # Not compared weight by weight with the CPU: the tiny random teacher's logits are ~0,
    # so a logit-space alpha and the joint phase's Adam steps amplify rounding differences.
    report = distill(
        tiny_distill_config(
            tiny_teacher, tiny_data, tmp_path / "c", device="cuda", n_students=2, **kw
        )
    )
    model = ShoalModel.from_pretrained(tmp_path / "c")
    assert model.alpha.device.type == "cpu" and len(report["prefix_accuracy"]) == 2
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_resume_on_cuda_of_a_cpu_checkpoint(tiny_teacher, tiny_data, tmp_path):
    cfg = tiny_distill_config(tiny_teacher, tiny_data, tmp_path / "c", n_students=2, device="cpu")
    assert distill(cfg, stop_after=1)["stopped_after"] == 1
    from dataclasses import replace

    report = distill(replace(cfg, device="cuda"))  # the device may change between runs
    assert len(report["prefix_accuracy"]) == 2
    assert ShoalModel.from_pretrained(tmp_path / "c").alpha.device.type == "cpu"


def test_eval_on_cuda_equals_the_cpu(tiny_teacher, tiny_data, tmp_path):
    cfg = tiny_distill_config(tiny_teacher, tiny_data, tmp_path / "c", n_students=2)
    distill(cfg)
    for model in (str(tiny_teacher), str(tmp_path / "c")):
        cpu = evaluate_model(model, str(tiny_data), device="cpu", max_length=32)
        gpu = evaluate_model(model, str(tiny_data), device="cuda", max_length=32)
        assert gpu["device"] == "cuda:0"
        assert gpu["accuracy"] == pytest.approx(cpu["accuracy"], abs=1 / cpu["examples"] + 1e-9)
