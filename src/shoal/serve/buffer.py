"""Request buffers: the paper's length-aware tail-merge queue and the FIFO baseline.

Both hold pending requests and hand out small batches (the paper calls them *elements*) to
free workers. No clock reads here: callers pass ``now``. Queue order is push order in both
buffers, so the engine should push requests in arrival order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from shoal.errors import ConfigError
from shoal.serve.errors import BufferFull


@dataclass(frozen=True, kw_only=True)
class BufferConfig:
    """How pending requests are grouped into batches."""

    bin_width: int = 16
    """Tokens per length bin: bin ``i`` holds lengths ``[i * bin_width, (i + 1) * bin_width)``."""
    max_batch_tokens: int = 4096
    """Per-batch limit in padded tokens (``n_items * longest item``). A single request longer
    than this still forms a batch of its own."""
    max_batch_size: int = 64
    """Most requests in one batch."""
    capacity: int = 1024
    """Most pending requests; a push beyond this raises ``BufferFull`` (unless the push is
    marked ``past_capacity``: a request larger than the capacity admitted into an empty
    buffer)."""
    max_wait_s: float = 0.0
    """FIFO baseline only: how long the oldest request may wait for a fuller batch (0 = never
    wait). The length-aware buffer never waits, as in the paper."""

    def __post_init__(self) -> None:
        for name in ("bin_width", "max_batch_tokens", "max_batch_size", "capacity"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name}={value} must be at least 1; set a positive {name}.")
        if not (math.isfinite(self.max_wait_s) and self.max_wait_s >= 0):
            raise ConfigError(
                f"max_wait_s={self.max_wait_s} must be a finite number >= 0; use 0 to never wait."
            )

    def bin_of(self, n_tokens: int) -> int:
        """The length bin of a request of ``n_tokens`` tokens."""
        return n_tokens // self.bin_width


def check_room(held: int, capacity: int) -> None:
    """Raise ``BufferFull`` when a buffer holding ``held`` requests has no room for one more."""
    if held >= capacity:
        raise BufferFull(
            f"buffer holds {held} requests (capacity={capacity}); retry later or raise the capacity"
        )


@dataclass(frozen=True)
class Item:
    """One pending request. ``deadline`` is absolute (same clock as ``arrival``)."""

    id: int
    n_tokens: int
    arrival: float
    deadline: float | None = None
    min_k: int = 1
    payload: object = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise ValueError(f"item {self.id}: n_tokens={self.n_tokens} must be at least 1")
        if self.min_k < 1:
            raise ValueError(f"item {self.id}: min_k={self.min_k} must be at least 1")


@dataclass
class PendingBatch:
    """A small batch of requests, in push order. ``bin`` is the length bin (for FIFO batches,
    the bin of the longest item)."""

    items: list[Item]
    bin: int

    def __len__(self) -> int:
        return len(self.items)

    @property
    def max_tokens(self) -> int:
        """Length of the longest item: the runner pads the batch to it."""
        return max((it.n_tokens for it in self.items), default=0)

    @property
    def padded_tokens(self) -> int:
        return len(self.items) * self.max_tokens

    @property
    def real_tokens(self) -> int:
        return sum(it.n_tokens for it in self.items)


class Buffer(Protocol):
    """What the scheduler needs from a buffer."""

    config: BufferConfig

    def push(self, item: Item, *, past_capacity: bool = False) -> None: ...
    def pop(self) -> PendingBatch | None: ...
    def peek(self) -> PendingBatch | None: ...
    def ready(self, now: float) -> bool: ...
    def cancel(self, item_id: int) -> bool: ...
    def expire(self, now: float) -> list[Item]: ...
    def items(self) -> Iterator[Item]: ...
    def shapes(self) -> list[tuple[int, int]]: ...
    def __len__(self) -> int: ...
    @property
    def pending_tokens(self) -> int: ...
    @property
    def pending_padded_tokens(self) -> int: ...
    @property
    def oldest_arrival(self) -> float | None: ...


def _is_expired(item: Item, now: float) -> bool:
    # At its deadline a request can no longer be answered in time, so it counts as expired.
    return item.deadline is not None and item.deadline <= now


class LengthAwareBuffer:
    """The paper's buffer: a queue of batches; a new request merges into the *tail* batch iff
    it is in the same length bin and that batch stays within ``max_batch_size`` requests and
    ``max_batch_tokens`` padded tokens; otherwise it starts a new tail batch."""

    def __init__(self, config: BufferConfig | None = None) -> None:
        self.config = config if config is not None else BufferConfig()
        self._batches: deque[PendingBatch] = deque()
        self._where: dict[int, PendingBatch] = {}  # request id -> its batch, for cancel
        self._tokens = 0

    def _fits(self, pending: PendingBatch, item: Item) -> bool:
        cfg = self.config
        n = len(pending) + 1
        return (
            pending.bin == cfg.bin_of(item.n_tokens)
            and n <= cfg.max_batch_size
            and n * max(pending.max_tokens, item.n_tokens) <= cfg.max_batch_tokens
        )

    def push(self, item: Item, *, past_capacity: bool = False) -> None:
        """Add a request; raises ``BufferFull`` at capacity (unless ``past_capacity``),
        ``ValueError`` on a duplicate id."""
        if not past_capacity:
            check_room(len(self._where), self.config.capacity)
        if item.id in self._where:
            raise ValueError(f"request id {item.id} is already pending")
        tail = self._batches[-1] if self._batches else None
        if tail is not None and self._fits(tail, item):
            tail.items.append(item)
        else:
            tail = PendingBatch([item], self.config.bin_of(item.n_tokens))
            self._batches.append(tail)
        self._where[item.id] = tail
        self._tokens += item.n_tokens

    def pop(self) -> PendingBatch | None:
        """Remove and return the head batch; a free worker takes it at once (no delay)."""
        if not self._batches:
            return None
        pending = self._batches.popleft()
        for it in pending.items:
            del self._where[it.id]
        self._tokens -= pending.real_tokens
        return pending

    def peek(self) -> PendingBatch | None:
        """The head batch, left in place (do not mutate it)."""
        return self._batches[0] if self._batches else None

    def ready(self, now: float) -> bool:
        """True whenever something is pending: the length-aware buffer never waits."""
        return bool(self._batches)

    def _drop(self, pending: PendingBatch) -> None:
        # By identity: two batches may hold equal items lists (both empty, say).
        for i, e in enumerate(self._batches):
            if e is pending:
                del self._batches[i]
                return

    def cancel(self, item_id: int) -> bool:
        """Remove a pending request; a batch left empty is dropped. False if not pending."""
        pending = self._where.pop(item_id, None)
        if pending is None:
            return False
        kept = [it for it in pending.items if it.id != item_id]
        self._tokens -= pending.real_tokens - sum(it.n_tokens for it in kept)
        pending.items[:] = kept
        if not kept:
            self._drop(pending)
        return True

    def expire(self, now: float) -> list[Item]:
        """Remove and return (in queue order) the requests whose deadline is at or before now."""
        expired = [it for it in self.items() if _is_expired(it, now)]
        for it in expired:
            self.cancel(it.id)
        return expired

    def items(self) -> Iterator[Item]:
        """Pending requests in queue order."""
        for pending in self._batches:
            yield from pending.items

    def shapes(self) -> list[tuple[int, int]]:
        """``(n_items, padded_length)`` of each pending batch, head first."""
        return [(len(e), e.max_tokens) for e in self._batches]

    def __len__(self) -> int:
        return len(self._where)

    @property
    def pending_tokens(self) -> int:
        return self._tokens

    @property
    def pending_padded_tokens(self) -> int:
        return sum(e.padded_tokens for e in self._batches)

    @property
    def oldest_arrival(self) -> float | None:
        return min((it.arrival for it in self.items()), default=None)


class FifoBuffer:
    """Baseline: plain FIFO dynamic batching as in common servers. ``pop`` takes the first
    requests in push order, up to ``max_batch_size`` and ``max_batch_tokens`` padded tokens,
    regardless of length."""

    def __init__(self, config: BufferConfig | None = None) -> None:
        self.config = config if config is not None else BufferConfig()
        self._items: deque[Item] = deque()
        self._ids: set[int] = set()
        self._tokens = 0

    def _batch_sizes(self, items: Iterable[Item]) -> Iterator[tuple[int, int]]:
        # Greedy split into batches: (n_items, padded_length) for each, in order.
        cfg = self.config
        n, longest = 0, 0
        for it in items:
            grown = max(longest, it.n_tokens)
            if n > 0 and (n + 1 > cfg.max_batch_size or (n + 1) * grown > cfg.max_batch_tokens):
                yield n, longest
                n, grown = 0, it.n_tokens
            n, longest = n + 1, grown
        if n:
            yield n, longest

    def push(self, item: Item, *, past_capacity: bool = False) -> None:
        """Add a request; raises ``BufferFull`` at capacity (unless ``past_capacity``),
        ``ValueError`` on a duplicate id."""
        if not past_capacity:
            check_room(len(self._items), self.config.capacity)
        if item.id in self._ids:
            raise ValueError(f"request id {item.id} is already pending")
        self._items.append(item)
        self._ids.add(item.id)
        self._tokens += item.n_tokens

    def peek(self) -> PendingBatch | None:
        """The batch ``pop`` would return, left in place."""
        first = next(self._batch_sizes(self._items), None)
        if first is None:
            return None
        batch = [self._items[i] for i in range(first[0])]
        return PendingBatch(batch, self.config.bin_of(first[1]))

    def pop(self) -> PendingBatch | None:
        """Remove and return the next batch (first requests in push order)."""
        pending = self.peek()
        if pending is None:
            return None
        for it in pending.items:
            self._items.popleft()
            self._ids.discard(it.id)
        self._tokens -= pending.real_tokens
        return pending

    def ready(self, now: float) -> bool:
        """True when the next batch is full (by size or tokens) or the oldest request has
        waited ``max_wait_s``."""
        if not self._items:
            return False
        n_next = next(self._batch_sizes(self._items))[0]
        full = n_next == self.config.max_batch_size or n_next < len(self._items)
        return full or now - self._items[0].arrival >= self.config.max_wait_s

    def cancel(self, item_id: int) -> bool:
        """Remove a pending request. False if not pending."""
        if item_id not in self._ids:
            return False
        for i, it in enumerate(self._items):
            if it.id == item_id:
                del self._items[i]
                self._ids.discard(item_id)
                self._tokens -= it.n_tokens
                break
        return True

    def expire(self, now: float) -> list[Item]:
        """Remove and return (in queue order) the requests whose deadline is at or before now."""
        expired = [it for it in self._items if _is_expired(it, now)]
        for it in expired:
            self.cancel(it.id)
        return expired

    def items(self) -> Iterator[Item]:
        """Pending requests in queue order."""
        return iter(list(self._items))

    def shapes(self) -> list[tuple[int, int]]:
        """``(n_items, padded_length)`` of the batches the pending requests would form now."""
        return list(self._batch_sizes(self._items))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def pending_tokens(self) -> int:
        return self._tokens

    @property
    def pending_padded_tokens(self) -> int:
        return sum(n * length for n, length in self.shapes())

    @property
    def oldest_arrival(self) -> float | None:
        return min((it.arrival for it in self._items), default=None)
