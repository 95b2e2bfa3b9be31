"""Buffers: the tail-merge rule against a slow reference, the paper's example, FIFO baseline."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from shoal.errors import ConfigError
from shoal.serve.buffer import BufferConfig, FifoBuffer, Item, LengthAwareBuffer, PendingBatch
from shoal.serve.errors import BufferFull


class ReferenceTailMerge:
    """Obviously correct, slow: a list of (bin, items) lists, re-checked from scratch."""

    def __init__(self, cfg: BufferConfig) -> None:
        self.cfg = cfg
        self.batches: list[tuple[int, list[Item]]] = []

    def count(self) -> int:
        return sum(len(items) for _, items in self.batches)

    def push(self, item: Item) -> None:
        if self.count() >= self.cfg.capacity:
            raise BufferFull("full")
        b = item.n_tokens // self.cfg.bin_width
        if self.batches:
            tail_bin, tail = self.batches[-1]
            merged = [*tail, item]
            longest = max(it.n_tokens for it in merged)
            if (
                tail_bin == b
                and len(merged) <= self.cfg.max_batch_size
                and len(merged) * longest <= self.cfg.max_batch_tokens
            ):
                tail.append(item)
                return
        self.batches.append((b, [item]))

    def pop(self) -> tuple[int, list[Item]] | None:
        return self.batches.pop(0) if self.batches else None

    def remove(self, keep: Callable[[Item], bool]) -> None:
        self.batches = [(b, [it for it in items if keep(it)]) for b, items in self.batches]
        self.batches = [(b, items) for b, items in self.batches if items]

    def cancel(self, item_id: int) -> bool:
        found = any(it.id == item_id for _, items in self.batches for it in items)
        self.remove(lambda it: it.id != item_id)
        return found

    def expire(self, now: float) -> list[Item]:
        gone = [
            it
            for _, items in self.batches
            for it in items
            if it.deadline is not None and it.deadline <= now
        ]
        self.remove(lambda it: it not in gone)
        return gone


def state_of(buf: LengthAwareBuffer) -> list[list[int]]:
    """PendingBatch grouping as lists of ids, from the public API (shapes + queue order)."""
    ids = [it.id for it in buf.items()]
    out, i = [], 0
    for n, _ in buf.shapes():
        out.append(ids[i : i + n])
        i += n
    assert i == len(ids) == len(buf)
    return out


def random_length(rng: random.Random) -> int:
    # Mostly short with a long tail, so that bins repeat and limits bite.
    return min(300, int(rng.expovariate(1 / 30)) + 1)


@pytest.mark.parametrize("seed", range(150))
def test_length_aware_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    cfg = BufferConfig(
        bin_width=rng.choice([4, 8, 16, 32]),
        max_batch_size=rng.randint(1, 6),
        max_batch_tokens=rng.choice([32, 64, 128, 512]),
        capacity=rng.randint(3, 60),
    )
    buf, ref = LengthAwareBuffer(cfg), ReferenceTailMerge(cfg)
    next_id, now = 0, 0.0
    for _ in range(200):
        now += rng.random()
        op = rng.random()
        if op < 0.6:
            deadline = now + rng.uniform(0, 20) if rng.random() < 0.3 else None
            item = Item(next_id, random_length(rng), now, deadline=deadline)
            next_id += 1
            try:
                ref.push(item)
            except BufferFull:
                with pytest.raises(BufferFull):
                    buf.push(item)
            else:
                buf.push(item)
        elif op < 0.8:
            got, want = buf.pop(), ref.pop()
            if want is None:
                assert got is None
            else:
                assert got is not None
                assert (got.bin, got.items) == (want[0], want[1])
        elif op < 0.95:
            target = rng.randrange(next_id + 2)
            assert buf.cancel(target) == ref.cancel(target)
        else:
            assert buf.expire(now) == ref.expire(now)
        assert state_of(buf) == [[it.id for it in items] for _, items in ref.batches]
        assert buf.pending_tokens == sum(it.n_tokens for _, its in ref.batches for it in its)
        assert buf.pending_padded_tokens == sum(
            len(its) * max(it.n_tokens for it in its) for _, its in ref.batches
        )
        head = buf.peek()
        assert (head.items if head else None) == (ref.batches[0][1] if ref.batches else None)


def test_paper_example() -> None:
    """A 30-token sample joins the previous batch of its bin; a 52-token sample cannot join a
    full batch of its bin and starts a new one."""
    buf = LengthAwareBuffer(BufferConfig(bin_width=16, max_batch_size=2))
    buf.push(Item(0, 20, 0.0))  # bin [16, 32)
    buf.push(Item(1, 30, 0.1))  # same bin, batch not full -> joins
    assert state_of(buf) == [[0, 1]]
    buf.push(Item(2, 50, 0.2))  # bin [48, 64): new batch
    buf.push(Item(3, 60, 0.3))  # joins; batch now full (2 items)
    buf.push(Item(4, 52, 0.4))  # same bin but full -> new tail
    assert state_of(buf) == [[0, 1], [2, 3], [4]]
    head = buf.pop()
    assert head is not None and head.bin == 1 and head.padded_tokens == 60
    assert head.real_tokens == 50


def test_only_the_tail_is_merged_into() -> None:
    buf = LengthAwareBuffer(BufferConfig(bin_width=16))
    for i, n in enumerate([5, 40, 6]):  # 6 is in 5's bin, but the tail is 40's batch
        buf.push(Item(i, n, float(i)))
    assert state_of(buf) == [[0], [1], [2]]


def test_token_limit_starts_new_batch() -> None:
    buf = LengthAwareBuffer(BufferConfig(bin_width=64, max_batch_tokens=100))
    for i, n in enumerate([40, 45, 50]):  # 3 * 50 = 150 > 100
        buf.push(Item(i, n, 0.0))
    assert state_of(buf) == [[0, 1], [2]]
    assert buf.pending_padded_tokens == 2 * 45 + 50


def test_oversized_item_forms_its_own_batch() -> None:
    buf = LengthAwareBuffer(BufferConfig(max_batch_tokens=64))
    buf.push(Item(0, 500, 0.0))
    pending = buf.pop()
    assert pending is not None and pending.items == [Item(0, 500, 0.0)]


@pytest.mark.parametrize("make", [LengthAwareBuffer, FifoBuffer])
def test_capacity_and_duplicates(make: type) -> None:
    buf = make(BufferConfig(capacity=2))
    buf.push(Item(0, 10, 0.0))
    with pytest.raises(ValueError, match="already pending"):
        buf.push(Item(0, 10, 0.0))
    buf.push(Item(1, 10, 0.0))
    with pytest.raises(BufferFull, match="capacity=2"):
        buf.push(Item(2, 10, 0.0))
    assert len(buf) == 2
    buf.pop()
    buf.push(Item(2, 10, 0.0))  # room again


@pytest.mark.parametrize("make", [LengthAwareBuffer, FifoBuffer])
def test_expire_and_cancel(make: type) -> None:
    buf = make(BufferConfig(bin_width=16))
    buf.push(Item(0, 10, 0.0, deadline=5.0))
    buf.push(Item(1, 12, 0.0))
    buf.push(Item(2, 40, 1.0, deadline=2.0))
    assert buf.expire(1.9) == []
    assert buf.expire(2.0) == [Item(2, 40, 1.0, deadline=2.0)]
    assert buf.oldest_arrival == 0.0
    assert buf.cancel(0) and not buf.cancel(0) and not buf.cancel(99)
    assert [it.id for it in buf.items()] == [1]
    assert buf.pending_tokens == 12
    assert buf.cancel(1)
    assert len(buf) == 0 and buf.pop() is None and buf.peek() is None
    assert buf.oldest_arrival is None and buf.pending_padded_tokens == 0


def test_emptied_tail_is_dropped_so_previous_batch_is_tail_again() -> None:
    buf = LengthAwareBuffer(BufferConfig(bin_width=16))
    buf.push(Item(0, 10, 0.0))
    buf.push(Item(1, 40, 0.0))
    buf.cancel(1)
    buf.push(Item(2, 11, 0.0))
    assert state_of(buf) == [[0, 2]]


def test_length_aware_is_ready_whenever_non_empty() -> None:
    buf = LengthAwareBuffer()
    assert not buf.ready(0.0)
    buf.push(Item(0, 10, 0.0))
    assert buf.ready(0.0)


def reference_fifo_batches(items: list[Item], cfg: BufferConfig) -> list[list[int]]:
    batches: list[list[Item]] = []
    for it in items:
        if batches:
            cand = [*batches[-1], it]
            if (
                len(cand) <= cfg.max_batch_size
                and len(cand) * max(x.n_tokens for x in cand) <= cfg.max_batch_tokens
            ):
                batches[-1] = cand
                continue
        batches.append([it])
    return [[it.id for it in b] for b in batches]


@pytest.mark.parametrize("seed", range(50))
def test_fifo_pops_greedy_batches_in_arrival_order(seed: int) -> None:
    rng = random.Random(seed)
    cfg = BufferConfig(max_batch_size=rng.randint(1, 8), max_batch_tokens=rng.choice([64, 256]))
    items = [Item(i, random_length(rng), float(i)) for i in range(rng.randint(0, 40))]
    buf = FifoBuffer(cfg)
    for it in items:
        buf.push(it)
    want = reference_fifo_batches(items, cfg)
    assert [n for n, _ in buf.shapes()] == [len(b) for b in want]
    got = []
    while (pending := buf.pop()) is not None:
        got.append([it.id for it in pending.items])
    assert got == want


def test_fifo_ignores_length_bins() -> None:
    buf = FifoBuffer(BufferConfig(bin_width=16, max_batch_size=3))
    for i, n in enumerate([5, 100, 6, 7]):
        buf.push(Item(i, n, 0.0))
    pending = buf.pop()
    assert pending is not None
    assert [it.id for it in pending.items] == [0, 1, 2]
    assert pending.padded_tokens == 300 and pending.bin == 100 // 16


def test_fifo_ready_waits_for_full_batch_or_max_wait() -> None:
    buf = FifoBuffer(BufferConfig(max_batch_size=3, max_wait_s=0.5))
    buf.push(Item(0, 10, 1.0))
    assert not buf.ready(1.2)
    assert buf.ready(1.5)
    buf.push(Item(1, 10, 1.1))
    buf.push(Item(2, 10, 1.2))
    assert buf.ready(1.2)  # full by size


def test_fifo_ready_when_token_limit_cuts_the_batch() -> None:
    buf = FifoBuffer(BufferConfig(max_batch_size=8, max_batch_tokens=100, max_wait_s=9.0))
    buf.push(Item(0, 60, 0.0))
    assert not buf.ready(0.0)
    buf.push(Item(1, 60, 0.0))  # 2 * 60 > 100: the next batch is as big as it can get
    assert buf.ready(0.0)


def test_fifo_without_wait_is_always_ready() -> None:
    buf = FifoBuffer()
    buf.push(Item(0, 10, 3.0))
    assert buf.ready(3.0)


def test_pending_batch_properties() -> None:
    pending = PendingBatch([Item(0, 3, 0.0), Item(1, 7, 0.0)], bin=0)
    assert (len(pending), pending.max_tokens, pending.padded_tokens) == (2, 7, 14)
    assert pending.real_tokens == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bin_width": 0}, "bin_width=0"),
        ({"max_batch_size": 0}, "max_batch_size=0"),
        ({"max_batch_tokens": -1}, "max_batch_tokens=-1"),
        ({"capacity": 0}, "capacity=0"),
        ({"max_wait_s": -0.1}, "max_wait_s=-0.1"),
    ],
)
def test_config_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BufferConfig(**kwargs)  # type: ignore[arg-type]


def test_item_validation_and_payload_not_compared() -> None:
    with pytest.raises(ValueError, match="n_tokens=0"):
        Item(0, 0, 0.0)
    with pytest.raises(ValueError, match="min_k=0"):
        Item(0, 5, 0.0, min_k=0)
    assert Item(0, 5, 0.0, payload="a") == Item(0, 5, 0.0, payload="b")
