"""Which device slot each worker owns, which students each worker holds, who runs a batch.

Pure functions over plain data (no torch), so the layout is tested without a model.

Students are allocated in contiguous blocks: worker 0 holds students 0..a-1, worker 1 holds
a..b-1, and so on. A batch that uses the first k students then touches the fewest workers, and
on every worker the active students are a prefix of its block, which the fused path runs as one
computation. Workers beyond the number of blocks hold replicas of blocks, and dispatch picks the
least loaded replica.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shoal.errors import ConfigError

Allocation = list[tuple[int, ...]]
"""Students held by each worker, indexed by worker: ``allocation[w]`` is ascending."""


def available_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True, kw_only=True)
class Slot:
    """Where one worker process runs."""

    index: int
    """The worker's index, 0-based."""
    device: str
    """Torch device string: 'cpu' or 'cuda:N'."""
    cores: tuple[int, ...] = ()
    """CPU cores the process is pinned to; empty means no pinning."""
    threads: int = 1
    """Intra-op threads of the process (``torch.set_num_threads``)."""


def plan_slots(
    n_workers: int,
    device: str,
    *,
    threads: int | None,
    cores: Sequence[int],
    n_gpus: int = 0,
    procs_per_gpu: int = 1,
) -> list[Slot]:
    """One slot per worker.

    On CPU the available ``cores`` are split into consecutive groups of ``threads`` cores (by
    default as many as divide evenly, at least one); more workers x threads than cores wraps
    around, which oversubscribes. On CUDA worker w runs on GPU ``w // procs_per_gpu`` (modulo the
    GPUs), so ``procs_per_gpu`` processes share each GPU (run the MPS daemon for real sharing).

    Args:
        device: 'cpu', 'cuda' (every visible GPU) or 'cuda:N' (that GPU only).
        cores: CPU cores this process may use (``os.sched_getaffinity(0)``).
        n_gpus: visible CUDA devices.
    """
    if n_workers < 1:
        raise ConfigError(f"n_workers={n_workers} must be >= 1 to plan worker slots")
    if device == "cpu":
        cores = sorted(cores)
        if not cores:
            raise ConfigError("no CPU cores are available to this process")
        t = threads or max(1, len(cores) // n_workers)
        return [
            Slot(
                index=w,
                device="cpu",
                threads=t,
                cores=tuple(sorted({cores[(w * t + i) % len(cores)] for i in range(t)})),
            )
            for w in range(n_workers)
        ]
    if device.startswith("cuda"):
        if procs_per_gpu < 1:
            raise ConfigError(f"procs_per_gpu={procs_per_gpu} must be >= 1")
        if device == "cuda":
            if n_gpus < 1:
                raise ConfigError("device='cuda' but no CUDA device is visible; use device='cpu'")
            gpus = list(range(n_gpus))
        else:
            gpus = [int(device.split(":", 1)[1])]
        return [
            Slot(
                index=w,
                device=f"cuda:{gpus[(w // procs_per_gpu) % len(gpus)]}",
                threads=threads or 1,
            )
            for w in range(n_workers)
        ]
    raise ConfigError(f"device={device!r} is unknown; use 'cpu', 'cuda' or 'cuda:N'")


def blocks(n_students: int, n_blocks: int) -> list[tuple[int, ...]]:
    """Split students 0..n-1 into ``n_blocks`` contiguous blocks, sizes differing by at most 1."""
    base, extra = divmod(n_students, n_blocks)
    out, start = [], 0
    for b in range(n_blocks):
        size = base + (b < extra)
        out.append(tuple(range(start, start + size)))
        start += size
    return out


def allocate(
    n_students: int, n_workers: int, replicate: bool = False, max_per_worker: int | None = None
) -> Allocation:
    """Students held by each worker, as contiguous blocks.

    Without ``replicate`` the students are spread over as many workers as possible (the most
    parallelism for one batch); workers beyond ``n_students`` hold replicas. With ``replicate``
    each worker holds as many students as ``max_per_worker`` allows (all of them when None), so
    the cohort is copied onto as many worker groups as fit and independent batches run side by
    side.

    Args:
        max_per_worker: the most students one worker's memory holds; None for no limit.
    Returns:
        ``allocation[w]``: ascending student ids held by worker w; every student is held by at
        least one worker.
    """
    if n_students < 1 or n_workers < 1:
        raise ConfigError(
            f"allocate needs n_students >= 1 and n_workers >= 1, got "
            f"n_students={n_students}, n_workers={n_workers}"
        )
    cap = n_students if max_per_worker is None else max_per_worker
    if cap < 1:
        raise ConfigError(f"max_per_worker={max_per_worker} must be >= 1")
    need = -(-n_students // cap)  # fewest blocks that fit in memory
    if need > n_workers:
        raise ConfigError(
            f"{n_students} students need at least {need} workers at "
            f"{cap} students per worker, but there are {n_workers}; add workers "
            f"or raise max_students_per_worker"
        )
    n_blocks = need if replicate else min(n_workers, n_students)
    parts = blocks(n_students, n_blocks)
    return [parts[w % n_blocks] for w in range(n_workers)]


def workers_for(
    k: int, allocation: Allocation, load: Mapping[int, int] | None = None
) -> dict[int, tuple[int, ...]]:
    """Which workers run which of the first k students for one batch.

    Every student 0..k-1 is computed by exactly one worker (partial sums must not double-count).
    Among the workers holding a student, the one with the lowest ``load`` wins, then the one
    covering the most still-uncovered active students, then the lowest index.

    Args:
        load: batches in flight per worker (missing means 0).
    Returns:
        worker -> ascending active students it computes; workers with nothing to do are absent.
    """
    load = load or {}
    held = [set(s) for s in allocation]
    n = len(set().union(*held))
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} is outside 1..{n}: the allocation holds {n} students")
    todo = set(range(k))
    plan: dict[int, tuple[int, ...]] = {}
    for s in range(k):
        if s not in todo:
            continue
        holders = [w for w, h in enumerate(held) if s in h and w not in plan]
        if not holders:
            raise ConfigError(f"no worker holds student {s}; allocation {allocation} is incomplete")
        best = min(holders, key=lambda w: (load.get(w, 0), -len(held[w] & todo), w))
        mine = tuple(sorted(held[best] & todo))
        plan[best] = mine
        todo -= set(mine)
    return plan
