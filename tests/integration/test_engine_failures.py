"""Failures inside and outside a batch (the runtime raising, non-finite or misshapen logits,
answering a batch, tokenising): each request gets a 500 error body, the failure is counted by
stage in ``shoal_failures_total``, ``/health`` turns 503 from the ``FAILING_AFTER``-th failure in
a row until a forward pass succeeds, the engine's self-check reruns while failing, and a burst
of worker failures writes a bounded number of log lines."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from test_api import assert_error, make_app, serving
from test_engine_fakes import FakeRuntime, ManualClock, cohort_dir, make_engine

import shoal.serve.engine as engine_module
from shoal.serve.errors import BackendError, WorkerCrashed
from shoal.serve.failures import FAILING_AFTER, FAILURE_LOG_INTERVAL_S, RECHECK_S

__all__ = ["cohort_dir"]  # the fixture, imported for pytest
pytestmark = pytest.mark.anyio
ANSWER_S = 60.0
"""Bound on one answer: a request the engine forgets would otherwise hang the test."""


@pytest.fixture
def anyio_backend():
    return "asyncio"


class BrokenRuntime(FakeRuntime):
    """The fake runtime whose output is damaged: ``mode`` 'nan' (every logit NaN), 'shape'
    (one row too many) or 'nan_on_bad' (NaN rows for inputs holding the word 'bad');
    '' computes normally."""

    mode: str = ""
    bad_id: int = -1
    """The token id of 'bad' (for 'nan_on_bad')."""

    def run_batch(self, batch):
        out = super().run_batch(batch)
        if self.mode == "nan":
            out[:] = np.nan
        elif self.mode == "shape":
            out = np.vstack([out, out[:1]])
        elif self.mode == "nan_on_bad":
            out[(batch.input_ids == self.bad_id).any(axis=1)] = np.nan
        return out


def broken(cohort) -> BrokenRuntime:
    return BrokenRuntime.load(cohort)


async def post(client, text: str):
    return await asyncio.wait_for(client.post("/predict", json={"inputs": text}), ANSWER_S)


def failures_metric(text: str, stage: str) -> float:
    line = next(
        x for x in text.splitlines() if x.startswith(f'shoal_failures_total{{stage="{stage}"}}')
    )
    return float(line.split()[-1])


def break_tokenizer(encoder) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("tokenizer state corrupted")

    encoder.tokenizer = fail


@pytest.mark.parametrize(
    ("damage", "stage", "reason"),
    [
        ("nan", "output", "the model gave non-finite logits (NaN) for 1 of 1 inputs at k=3"),
        ("shape", "output", "the runtime returned logits of shape (2, 2) instead of (1, labels)"),
        ("raise", "runtime", "the runtime failed on a batch of 1 at k=3 (RuntimeError)"),
        ("answer", "answer", "answering a batch of 1 failed (RuntimeError)"),
        ("tokenizer", "request", "a request failed (RuntimeError)"),
    ],
)
async def test_failures_are_counted_and_turn_health_503_until_a_batch_runs(
    cohort_dir, monkeypatch, damage, stage, reason
):
    rt = broken(cohort_dir)
    app, engine, _ = make_app(cohort_dir, rt, pruning=False)
    tokenizer = app.state.context.encoder.tokenizer

    def spoil(on: bool) -> None:
        rt.mode = damage if on and damage in ("nan", "shape") else ""
        rt.fail = on and damage == "raise"
        if damage == "answer":
            if on:
                monkeypatch.setattr(engine_module, "encoded", _raising)
            else:
                monkeypatch.undo()
        if damage == "tokenizer":
            if on:
                break_tokenizer(app.state.context.encoder)
            else:
                app.state.context.encoder.tokenizer = tokenizer

    async with serving(app) as client:
        spoil(True)
        for i in range(FAILING_AFTER):
            assert (await client.get("/health")).status_code == 200
            assert_error(await post(client, f"good movie {i}"), 500, "backend", "request id")
        unhealthy = await client.get("/health")
        metrics = (await client.get("/metrics")).text
        spoil(False)
        assert (await post(client, "good movie")).status_code == 200
        healthy = await client.get("/health")
    assert_error(
        unhealthy, 503, "unhealthy", f"the last {FAILING_AFTER} batches or requests failed", reason
    )
    assert "once a forward pass succeeds" in unhealthy.json()["error"]
    assert failures_metric(metrics, stage) == FAILING_AFTER
    others = {"runtime", "output", "answer", "engine", "request", "self_check"} - {stage}
    assert all(failures_metric(metrics, s) == 0 for s in others)
    assert healthy.status_code == 200 and engine.batch_failures == 0


def _raising(item):
    raise RuntimeError("post-processing failed")


async def test_only_the_inputs_with_non_finite_logits_fail(cohort_dir):
    rt = broken(cohort_dir)
    engine, encoder, _ = make_engine(cohort_dir, rt, pruning=False)
    rt.bad_id = encoder.tokenizer.convert_tokens_to_ids("bad")
    rt.mode = "nan_on_bad"
    gate = rt.hold()
    await engine.start()
    try:
        first = engine.enqueue(await encoder.encode_all([("fine", None)]))
        assert await asyncio.to_thread(rt.entered.wait, 10), "no batch started"
        good = engine.enqueue(await encoder.encode_all([("good movie", None)]))
        bad = engine.enqueue(await encoder.encode_all([("bad plot", None)]))
        gate.set()
        await first.wait()
        (answer,) = await asyncio.wait_for(good.wait(), ANSWER_S)
        with pytest.raises(BackendError, match=r"non-finite logits \(NaN\) for this input"):
            await asyncio.wait_for(bad.wait(), ANSWER_S)
    finally:
        await engine.stop()
    assert [c.batch for c in rt.calls] == [1, 2]  # one batch held both
    assert np.isfinite(answer.logits).all()
    assert engine.batch_failures == 1 and "1 of 2 inputs" in engine.failures.last_reason


async def test_the_self_check_reruns_while_failing_and_ends_the_streak(cohort_dir):
    clock = ManualClock()
    engine, _, rt = make_engine(cohort_dir, clock=clock)
    checks: list[float] = []
    healthy = False

    def check() -> None:
        checks.append(clock())
        if not healthy:
            raise WorkerCrashed("worker 0 failed to start")

    engine.self_check = check
    stages: list[str] = []
    engine.subscribe_failures(stages.append)
    try:
        for _ in range(FAILING_AFTER):
            engine.record_failure("runtime", "the runtime failed", WorkerCrashed("down"))
        assert engine.failing is not None
        assert await engine.step() is False and checks == []  # not due yet
        clock.advance(RECHECK_S)
        assert await engine.step() is True and len(checks) == 1  # due: it ran, and failed
        assert engine.failing is not None and stages[-1] == "self_check"
        assert "the self-check failed: WorkerCrashed" in engine.failing
        assert await engine.step() is False  # the next one is RECHECK_S after that failure
        healthy = True
        clock.advance(RECHECK_S)
        assert await engine.step() is True and len(checks) == 2
        assert engine.failing is None and engine.batch_failures == 0
        assert await engine.step() is False and len(checks) == 2  # healthy: no more checks
    finally:
        await engine.stop()
    assert rt.calls == []  # the check is the engine's callable, not a batch


async def test_a_burst_of_worker_failures_logs_a_bounded_number_of_lines(cohort_dir, caplog):
    clock = ManualClock()
    rt = FakeRuntime.load(cohort_dir)
    engine, encoder, _ = make_engine(cohort_dir, rt, clock=clock)
    rt.execute = _worker_down  # every batch fails at once, as while a worker is backing off
    burst = 50
    caplog.set_level(logging.INFO, logger="shoal.serve.engine")
    await engine.start()
    try:
        encs = await encoder.encode_all([("good movie", None)])
        for _ in range(burst):
            with pytest.raises(BackendError):
                await asyncio.wait_for(engine.predict(encs), ANSWER_S)
        clock.advance(FAILURE_LOG_INTERVAL_S)
        with pytest.raises(BackendError):
            await asyncio.wait_for(engine.predict(encs), ANSWER_S)
        del rt.execute  # the worker is back
        await asyncio.wait_for(engine.predict(encs), ANSWER_S)
    finally:
        await engine.stop()
    records = [r for r in caplog.records if r.name == "shoal.serve.engine"]
    assert len(records) == 3, [r.getMessage() for r in records]
    first, summary, recovered = records
    assert first.exc_info is not None and "worker 0 (pid 7) was killed by SIGKILL" in (
        first.getMessage()
    )
    assert summary.exc_info is None and f"{burst} failures like it" in summary.getMessage()
    assert f"{burst + 1} since the first" in summary.getMessage()
    assert recovered.levelno == logging.WARNING
    assert f"serving again (a batch ran) after {burst + 1} runtime failure(s)" in (
        recovered.getMessage()
    )


def _worker_down(*args, **kwargs):
    raise WorkerCrashed("worker 0 (pid 7) was killed by SIGKILL while running a batch")
