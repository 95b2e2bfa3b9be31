"""Shared test doubles for the engine and API tests: a tiny cohort folder, a fake runtime that
runs it in process with a fixed cost model (and can hold batches on an event), a manual clock.

Imported by ``test_engine.py`` and ``test_api.py``; it holds no tests itself except a check of
the fakes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from shoal.models.cohort import ShoalModel
from shoal.serve.costmodel import CostModel

LABELS = ["negative", "positive"]
PREFIX = [
    {"k": 1, "dev_accuracy": 0.80, "test_accuracy": 0.79},
    {"k": 2, "dev_accuracy": 0.86, "test_accuracy": 0.85},
    {"k": 3, "dev_accuracy": 0.88, "test_accuracy": 0.87},
]


def make_cohort(folder: Path, teacher_dir: Path, n_students: int = 3) -> Path:
    """Save a tiny 3-student cohort (hidden 32) with its tokenizer and meta."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir)
    model = ShoalModel.from_teacher(teacher, n_students, 2, "spread")
    model.meta = {"prefix_accuracy": PREFIX[:n_students], "label_names": LABELS, "max_length": 32}
    model.save_pretrained(folder, AutoTokenizer.from_pretrained(teacher_dir))
    return folder


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory, tiny_teacher) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"), tiny_teacher)


def linear_costs(n_students: int = 3, per_token_s: float = 1e-6) -> CostModel:
    """A cost model linear in k, batch and length: ``per_token_s * k * batch * length``."""
    points = tuple(
        (k, b, n, per_token_s * k * b * n)
        for k in range(1, n_students + 1)
        for b in (1, 64)
        for n in (1, 128)
    )
    return CostModel(points=points)


@dataclass
class Call:
    """One ``execute`` the fake saw."""

    batch: int
    length: int
    k: int
    input_ids: torch.Tensor


@dataclass
class FakeRuntime:
    """The engine's runtime contract over an in-process cohort.

    ``gate``: when set to an unset event, each ``execute`` waits for it (set it to release).
    ``entered``: set as soon as an ``execute`` starts. ``fail``: raise instead of computing.
    ``clock`` with ``slowdown``: each ``execute`` advances the manual clock by ``slowdown`` times
    what the cost model predicts for the batch (a machine slower than its profile).
    """

    model: ShoalModel
    cost_model: CostModel = field(default_factory=linear_costs)
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    fail: bool = False
    calls: list[Call] = field(default_factory=list)
    closed: bool = False
    clock: ManualClock | None = None
    slowdown: float = 1.0

    @classmethod
    def load(cls, cohort: Path, **kwargs) -> FakeRuntime:
        return cls(ShoalModel.from_pretrained(cohort), **kwargs)

    def hold(self) -> threading.Event:
        """Hold every batch until the returned event is set."""
        self.gate = threading.Event()
        self.entered.clear()
        return self.gate

    def execute(self, input_ids, attention_mask, token_type_ids, k):
        self.calls.append(Call(input_ids.shape[0], input_ids.shape[1], k, input_ids.clone()))
        self.entered.set()
        if self.gate is not None and not self.gate.wait(10):
            raise TimeoutError("test gate never released")
        if self.fail:
            raise RuntimeError("injected failure")
        if self.clock is not None:
            batch, length = input_ids.shape
            self.clock.advance(self.slowdown * self.cost_model.cost(k, batch, length))
        with torch.inference_mode():
            return self.model(
                input_ids, attention_mask, token_type_ids, k=k, fused=True
            ).logits.float()

    def run_batch(self, batch):
        """What the engine calls: the ``Batch``'s numpy arrays as tensors, then ``execute``."""
        arrays = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
        return self.execute(*(torch.from_numpy(a) for a in arrays), batch.k).numpy()

    def close(self) -> None:
        self.closed = True


class ManualClock:
    """A clock the test moves by hand (deadlines without sleeping)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_fake_runtime_matches_the_model(cohort_dir):
    rt = FakeRuntime.load(cohort_dir)
    ids = torch.tensor([[2, 5, 6, 3]])
    out = rt.execute(ids, torch.ones_like(ids), torch.zeros_like(ids), k=2)
    assert out.shape == (1, 2) and out.dtype == torch.float32
    assert rt.calls[0].k == 2 and rt.calls[0].batch == 1


def make_engine(
    cohort: Path,
    runtime: FakeRuntime | None = None,
    *,
    clock=None,
    capacity: int = 64,
    latency_target_s: float = 0.1,
    floor_k: int = 1,
    pruning: bool = True,
    up_hold_s: float = 1.0,
    deadline_s: float | None = None,
    truncate: bool = True,
    calibrate: bool = True,
):
    """An engine over the fake runtime and the cohort's tokenizer: ``(engine, encoder, rt)``."""
    import time

    from transformers import AutoTokenizer

    from shoal.serve.buffer import BufferConfig
    from shoal.serve.encoder import TextEncoder
    from shoal.serve.engine import Engine
    from shoal.serve.policy import PolicyConfig
    from shoal.serve.scheduler import Scheduler, SchedulerConfig

    rt = runtime if runtime is not None else FakeRuntime.load(cohort)
    policy = PolicyConfig(
        n_students=rt.model.n_students,
        latency_target_s=latency_target_s,
        floor_k=floor_k,
        enabled=pruning,
        up_hold_s=up_hold_s,
    )
    scheduler = Scheduler(
        SchedulerConfig(policy=policy, buffer=BufferConfig(capacity=capacity), calibrate=calibrate),
        rt.cost_model,
    )
    encoder = TextEncoder(
        AutoTokenizer.from_pretrained(cohort), 32, truncate=truncate, max_chars=2000
    )
    engine = Engine(
        rt,
        scheduler,
        pad_id=encoder.pad_id,
        default_deadline_s=deadline_s,
        clock=clock or time.monotonic,
    )
    return engine, encoder, rt
