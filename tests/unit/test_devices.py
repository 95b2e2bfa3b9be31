"""``--device``: resolving it, refusing what the machine lacks, moving batches."""

from __future__ import annotations

import pytest
import torch

from shoal.devices import model_device, resolve_device, to_device
from shoal.errors import ConfigError


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_the_first_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_missing_gpu_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device.*--device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"only 1 CUDA device.*cuda:0\.\.cuda:0"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["gpu0", "", "cuda:x", "meta"])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ConfigError, match="device="):
        resolve_device(name)


def test_to_device_keeps_the_index_on_the_cpu():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "index": torch.tensor([4, 7])}
    assert to_device(batch, torch.device("cpu")) is batch
    moved = to_device(batch, torch.device("meta"))
    assert moved["input_ids"].device.type == "meta"
    assert moved["index"] is batch["index"]


def test_model_device():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


@pytest.mark.parametrize("native", [True, False])
def test_autocast_follows_the_precision_and_auto_follows_the_hardware(monkeypatch, native):
    from shoal import devices

    monkeypatch.setattr(devices, "bf16_native", lambda device: native)
    cpu = torch.device("cpu")
    assert devices.autocast(cpu, "bf16").enabled
    assert not devices.autocast(cpu, "fp32").enabled
    mixed = devices.autocast(cpu, "auto")
    assert mixed.enabled is native
    with mixed():
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
