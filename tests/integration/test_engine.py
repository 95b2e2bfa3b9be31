"""The engine over a fake runtime: batching, pruning with per-request minimum k, deadlines,
cancellation before compute, bounded admission, drain, failures and tokenisation. Batches are
held on events, so every interleaving is deterministic."""

from __future__ import annotations

import asyncio

import pytest
import torch
from test_engine_fakes import FakeRuntime, ManualClock, cohort_dir, linear_costs, make_engine

from shoal.serve.batch import Batch
from shoal.serve.errors import (
    BackendError,
    BufferFull,
    DeadlineExceeded,
    Draining,
    InputError,
    InputTooLong,
    InvalidRequest,
)

__all__ = ["cohort_dir"]  # the fixture, imported for pytest
pytestmark = pytest.mark.anyio

SHORT = ["good movie", "bad plot", "the film was fine", "not so nice", "awful", "great"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def entered(rt: FakeRuntime) -> None:
    """Wait (in a thread, bounded) until the fake runtime has started a batch."""
    assert await asyncio.to_thread(rt.entered.wait, 10), "no batch started"


def reference(rt: FakeRuntime, enc, k: int) -> torch.Tensor:
    ids = torch.tensor([enc.input_ids])
    with torch.inference_mode():
        return rt.model(
            ids, torch.ones_like(ids), torch.tensor([enc.token_type_ids]), k=k, fused=False
        ).logits[0]


async def test_requests_queued_behind_a_batch_run_as_one_batch(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir, pruning=False)
    gate = rt.hold()
    await engine.start()
    try:
        first = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        encs = await encoder.encode_all([(t, None) for t in SHORT[1:]])
        tickets = [engine.enqueue([e]) for e in encs]
        assert engine.queue_depth == 5
        gate.set()
        (p0,) = await first.wait()
        preds = [(await t.wait())[0] for t in tickets]
    finally:
        await engine.stop()
    assert [(c.batch, c.k) for c in rt.calls] == [(1, 3), (5, 3)]
    assert rt.calls[1].length == max(e.n_tokens for e in encs)  # padded to the longest
    for enc, p in zip(encs, preds, strict=True):
        # Padding in a batch must not change any answer.
        torch.testing.assert_close(
            torch.tensor(p.logits), reference(rt, enc, 3), rtol=1e-4, atol=1e-5
        )
        assert p.batch_size == 5 and p.k == 3 and abs(sum(p.scores) - 1) < 1e-5
        assert p.label_id == max(range(2), key=lambda i: p.scores[i])
    assert p0.batch_size == 1 and p0.queue_s >= 0 and p0.inference_s > 0


async def test_pruning_drops_k_and_min_k_is_honoured(cohort_dir):
    # Every batch costs more than the target, so the policy runs the floor (k=1) ...
    rt = FakeRuntime.load(cohort_dir, cost_model=linear_costs(per_token_s=1.0))
    engine, encoder, _ = make_engine(cohort_dir, rt, latency_target_s=0.01)
    await engine.start()
    try:
        (plain,) = await engine.predict(await encoder.encode_all([(SHORT[0], None)]))
        # ... except for a request that asks for more students.
        (strict,) = await engine.predict(await encoder.encode_all([(SHORT[0], None)]), min_k=3)
        with pytest.raises(InvalidRequest, match="min_k=4"):
            engine.enqueue(await encoder.encode_all([(SHORT[0], None)]), min_k=4)
    finally:
        await engine.stop()
    assert plain.k == 1 and strict.k == 3
    assert [c.k for c in rt.calls] == [1, 3]
    assert plain.logits != strict.logits


async def test_a_backlog_lowers_k(cohort_dir):
    # 3e-4 s per token-student: one short request at k=3 fits the 80 ms budget, 40 do not.
    rt = FakeRuntime.load(cohort_dir, cost_model=linear_costs(per_token_s=3e-4))
    engine, encoder, _ = make_engine(cohort_dir, rt, latency_target_s=0.1)
    gate = rt.hold()
    await engine.start()
    try:
        first = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        encs = await encoder.encode_all([(SHORT[i % 6], None) for i in range(40)])
        backlog = engine.enqueue(encs)
        gate.set()
        await first.wait()
        preds = await backlog.wait()
    finally:
        await engine.stop()
    assert rt.calls[0].k == 3
    assert rt.calls[1].k < 3 and {p.k for p in preds} == {rt.calls[1].k}


async def test_expired_requests_fail_without_compute(cohort_dir):
    clock = ManualClock()
    engine, encoder, rt = make_engine(cohort_dir, clock=clock)
    gate = rt.hold()
    await engine.start()
    try:
        first = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        late = engine.enqueue(await encoder.encode_all([(SHORT[1], None)]), deadline_s=0.05)
        clock.advance(0.1)
        gate.set()
        await first.wait()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await late.wait()
    finally:
        await engine.stop()
    assert len(rt.calls) == 1
    assert engine.scheduler.stats.expired == 1


async def test_default_deadline_applies(cohort_dir):
    clock = ManualClock()
    engine, encoder, rt = make_engine(cohort_dir, clock=clock, deadline_s=1.0)
    gate = rt.hold()
    await engine.start()
    try:
        first = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        late = engine.enqueue(await encoder.encode_all([(SHORT[1], None)]))
        clock.advance(2.0)
        gate.set()
        await first.wait()  # it was already running when its deadline passed: answered
        with pytest.raises(DeadlineExceeded):
            await late.wait()
    finally:
        await engine.stop()


async def test_cancelled_requests_are_dropped_before_compute(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir)
    gate = rt.hold()
    await engine.start()
    try:
        first = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        withdrawn = engine.enqueue(await encoder.encode_all([(SHORT[1], None)]))
        # asyncio cancellation of a caller waiting on its predictions
        waiter = asyncio.ensure_future(
            engine.predict(await encoder.encode_all([(SHORT[2], None), (SHORT[3], None)]))
        )
        kept = engine.enqueue(await encoder.encode_all([(SHORT[4], None)]))
        await asyncio.sleep(0)  # one loop turn: the waiter is now awaiting its futures
        assert engine.queue_depth == 4
        withdrawn.cancel()  # what the API does when the client disconnects
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert engine.queue_depth == 1
        gate.set()
        await first.wait()
        await kept.wait()
    finally:
        await engine.stop()
    assert [c.batch for c in rt.calls] == [1, 1]
    assert engine.scheduler.stats.cancelled == 3


async def test_admission_is_bounded(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir, capacity=2)
    gate = rt.hold()
    await engine.start()
    try:
        running = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        queued = engine.enqueue(await encoder.encode_all([(SHORT[1], None)]))
        with pytest.raises(BufferFull):  # all or nothing: the first of the two is withdrawn
            engine.enqueue(await encoder.encode_all([(SHORT[2], None), (SHORT[3], None)]))
        assert engine.queue_depth == 1
        last = engine.enqueue(await encoder.encode_all([(SHORT[4], None)]))
        with pytest.raises(BufferFull):
            engine.enqueue(await encoder.encode_all([(SHORT[5], None)]))
        gate.set()
        for t in (running, queued, last):
            await t.wait()
    finally:
        await engine.stop()
    assert engine.scheduler.stats.rejected == 2


async def test_a_request_larger_than_the_capacity_waits_for_an_empty_queue(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir, capacity=2)
    gate = rt.hold()
    await engine.start()
    try:
        running = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        queued = engine.enqueue(await encoder.encode_all([(SHORT[1], None)]))
        three = await encoder.encode_all([(t, None) for t in SHORT[2:5]])
        with pytest.raises(BufferFull, match="larger than the queue capacity"):
            engine.enqueue(three)
        assert engine.queue_depth == 1
        gate.set()
        await running.wait()
        await queued.wait()
        gate = rt.hold()
        running = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        big = engine.enqueue(three)  # the queue is empty: queued whole, past the capacity
        assert engine.queue_depth == 3
        with pytest.raises(BufferFull):
            engine.enqueue(await encoder.encode_all([(SHORT[5], None)]))
        gate.set()
        await running.wait()
        assert len(await big.wait()) == 3
    finally:
        await engine.stop()
    assert engine.scheduler.stats.rejected == 4


async def test_drain_answers_accepted_requests_and_refuses_new_ones(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir)
    gate = rt.hold()
    await engine.start()
    try:
        tickets = [engine.enqueue(await encoder.encode_all([(t, None)])) for t in SHORT]
        await entered(rt)
        drain = asyncio.ensure_future(engine.drain(10))
        await asyncio.sleep(0)
        assert not engine.accepting
        with pytest.raises(Draining):
            engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        assert not drain.done()
        gate.set()
        assert await drain is True
        answers = [await t.wait() for t in tickets]
    finally:
        await engine.stop()
    assert len(answers) == len(SHORT) and engine.queue_depth == 0


async def test_drain_timeout_fails_what_is_left(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir)
    gate = rt.hold()
    await engine.start()
    try:
        running = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        queued = engine.enqueue(await encoder.encode_all([(SHORT[1], None)]))
        assert await engine.drain(0.05) is False
        with pytest.raises(Draining):
            await queued.wait()
        gate.set()
        await running.wait()
    finally:
        await engine.stop()


async def test_a_failing_batch_fails_its_requests_only(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir)
    rt.fail = True
    await engine.start()
    try:
        with pytest.raises(BackendError, match="injected"):
            await engine.predict(await encoder.encode_all([(SHORT[0], None)]))
        rt.fail = False
        (ok,) = await engine.predict(await encoder.encode_all([(SHORT[0], None)]))
        assert engine.running
    finally:
        await engine.stop()
    assert ok.k == 3


async def test_observers_see_every_batch(cohort_dir):
    engine, encoder, rt = make_engine(cohort_dir)
    seen = []
    engine.subscribe(seen.append)
    await engine.start()
    try:
        await engine.predict(await encoder.encode_all([(t, None) for t in SHORT[:3]]))
    finally:
        await engine.stop()
    assert sum(b.size for b in seen) == 3
    assert all(b.padded_tokens >= b.real_tokens > 0 for b in seen)


async def test_submit_needs_a_running_engine(cohort_dir):
    engine, encoder, _ = make_engine(cohort_dir)
    with pytest.raises(Draining):
        engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))


# ------------------------------------------------------------------------------ tokenising


async def test_encoder_truncates_or_refuses_long_inputs(cohort_dir):
    _, encoder, _ = make_engine(cohort_dir)
    long = " ".join(["good", "bad"] * 40)
    (cut,) = await encoder.encode_all([(long, None)])
    assert cut.n_tokens == 32 and cut.truncated
    (left,) = await encoder.encode_all([(long + " awful", None)], direction="left")
    (right,) = await encoder.encode_all([(long + " awful", None)], direction="right")
    assert left.input_ids[-2] != right.input_ids[-2]  # left keeps the end of the text
    with pytest.raises(InputTooLong, match="max_length=32"):
        await encoder.encode_all([(long, None)], truncate=False)
    with pytest.raises(InputTooLong, match="characters"):
        await encoder.encode_all([("good " * 1000, None)])
    with pytest.raises(InputError, match="input 1: the text is empty"):
        await encoder.encode_all([("good", None), ("  ", None)])
    (pair,) = await encoder.encode_all([("good movie", "bad plot")])
    assert set(pair.token_type_ids) == {0, 1} and not pair.truncated
    encoder.close()


def test_batch_from_items_pads_right(cohort_dir):
    from shoal.serve.buffer import Item
    from shoal.serve.encoder import TokenizedInput

    items = [
        Item(0, 3, 0.0, payload=TokenizedInput([2, 5, 3], [0, 0, 0])),
        Item(1, 5, 0.0, payload=TokenizedInput([2, 5, 6, 7, 3], [0, 0, 1, 1, 1])),
    ]
    batch = Batch.from_items(items, 5, pad_id=0, k=2)
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
    assert batch.shape == (2, 5) and batch.k == 2
    assert ids.tolist() == [[2, 5, 3, 0, 0], [2, 5, 6, 7, 3]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert types.tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]


LONG_MIX = [
    (" ".join(["good", "bad"] * 30), None),
    ("good movie", "bad plot"),
    (" ".join(["fine", "plot"] * 12) + " awful", " ".join(["dull"] * 25) + " great"),
    ("good", " ".join(["bad"] * 40)),
]


@pytest.mark.parametrize("direction", ["left", "right"])
async def test_long_requests_tokenise_off_the_loop_with_the_same_result(
    cohort_dir, direction, monkeypatch
):
    _, encoder, _ = make_engine(cohort_dir)
    inline = await encoder.encode_all(LONG_MIX, direction=direction)
    encoder.inline_chars = 10  # now the request is "long": the tokenizer thread does it
    assert encoder._thread_backend is not None  # a fast tokenizer: one encode_batch a request
    threaded = await encoder.encode_all(LONG_MIX, direction=direction)
    assert threaded == inline
    assert [x.truncated for x in inline] == [True, False, True, True]
    assert encoder.tokenizer.truncation_side == "right"  # restored after a left cut
    with pytest.raises(InputTooLong, match="input 0 has 62 tokens, above max_length=32"):
        await encoder.encode_all(LONG_MIX, truncate=False)
    with pytest.raises(InputError, match="input 1: the pair is empty"):
        await encoder.encode_all([LONG_MIX[0], ("good", " \u200b ")])
    calls = []
    backend = encoder._thread_backend

    class Counting:  # the backend, counting its encode_batch calls
        def __getattr__(self, name):
            return getattr(backend, name)

        def encode_batch(self, batch, **kw):
            calls.append(len(batch))
            return backend.encode_batch(batch, **kw)

    monkeypatch.setattr("shoal.serve.encoder.GROUP_CHARS", 100)  # about one input a group
    encoder._thread_backend = Counting()
    assert await encoder.encode_all(LONG_MIX, direction=direction) == inline
    assert sum(calls) == len(LONG_MIX) + 3 and max(calls) < len(LONG_MIX)  # + the 3 re-cut
    encoder._thread_backend = None  # a slow tokenizer: one call a text, as on the loop
    assert await encoder.encode_all(LONG_MIX, direction=direction) == inline
    encoder.close()


def test_a_tokenizer_without_type_ids_gives_zeros_on_both_paths(tmp_path):
    from shoal.serve.encoder import TextEncoder
    from tiny_fixtures import make_fairseq_tokenizer

    encoder = TextEncoder(make_fairseq_tokenizer(tmp_path / "tok"), 16, inline_chars=10)
    pair = [("good movie " * 6, "bad plot " * 6)]
    threaded = asyncio.run(encoder.encode_all(pair))
    encoder.inline_chars = 10_000
    assert asyncio.run(encoder.encode_all(pair)) == threaded
    assert threaded[0].n_tokens == 16 and set(threaded[0].token_type_ids) == {0}
    encoder.close()


@pytest.mark.parametrize("calibrate", [True, False])
async def test_batches_slower_than_profiled_make_the_policy_prune_earlier(cohort_dir, calibrate):
    # Every batch takes 3x what the cost model says. The backlog fits the drain budget at k=3
    # by the profile, so only a calibrated scheduler sees that it does not.
    clock = ManualClock()
    rt = FakeRuntime.load(
        cohort_dir, cost_model=linear_costs(per_token_s=1.4e-4), clock=clock, slowdown=3.0
    )
    engine, encoder, _ = make_engine(cohort_dir, rt, clock=clock, calibrate=calibrate)
    await engine.start()
    try:
        for i in range(30):  # light load: one request at a time, every answer at k=3
            (pred,) = await engine.predict(await encoder.encode_all([(SHORT[i % 6], None)]))
            assert pred.k == 3
            clock.advance(1.0)
        scale = engine.cost_scale
        gate = rt.hold()
        first = engine.enqueue(await encoder.encode_all([(SHORT[0], None)]))
        await entered(rt)
        backlog = engine.enqueue(await encoder.encode_all([(SHORT[i % 6], None)] * 40))
        gate.set()
        await first.wait()
        preds = await backlog.wait()
    finally:
        await engine.stop()
    budget = 0.8 * 0.1
    predicted = rt.cost_model.cost(3, 40, rt.calls[-1].length)
    assert predicted < budget < 3 * predicted  # the profile says k=3 fits; the truth does not
    if calibrate:
        assert scale == pytest.approx(3.0, rel=0.05)
        assert {p.k for p in preds} == {1}
    else:
        assert scale == 1.0
        assert {p.k for p in preds} == {3}
