"""Allocation and slots: pure functions, checked against their invariants on generated cases."""

from __future__ import annotations

import itertools
import random

import pytest

from shoal.errors import ConfigError
from shoal.serve.runtime.allocation import allocate, blocks, plan_slots, workers_for
from shoal.serve.runtime.config import RuntimeConfig


def _is_contiguous(block: tuple[int, ...]) -> bool:
    return list(block) == list(range(block[0], block[0] + len(block)))


@pytest.mark.parametrize("n,w", [(1, 1), (4, 1), (4, 2), (5, 2), (3, 4), (8, 3), (7, 7)])
def test_spread_uses_contiguous_blocks_and_every_worker(n, w):
    alloc = allocate(n, w)
    assert len(alloc) == w
    assert all(b and _is_contiguous(b) for b in alloc)
    assert set().union(*map(set, alloc)) == set(range(n))
    distinct = sorted(set(alloc))
    assert len(distinct) == min(n, w)  # as many blocks as can be used, the rest replicas
    sizes = [len(b) for b in distinct]
    assert max(sizes) - min(sizes) <= 1


def test_replicate_copies_the_cohort_as_often_as_memory_allows():
    assert allocate(4, 3, replicate=True) == [(0, 1, 2, 3)] * 3
    assert allocate(4, 4, replicate=True, max_per_worker=2) == [(0, 1), (2, 3)] * 2
    assert allocate(5, 3, replicate=True, max_per_worker=2) == [(0, 1), (2, 3), (4,)]
    assert allocate(5, 3, replicate=True, max_per_worker=3) == [(0, 1, 2), (3, 4), (0, 1, 2)]


def test_too_little_memory_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="need at least 3 workers.*max_students_per_worker"):
        allocate(6, 2, max_per_worker=2)
    with pytest.raises(ConfigError, match="n_workers=0"):
        allocate(3, 0)


def test_blocks_partition_in_order():
    assert blocks(5, 2) == [(0, 1, 2), (3, 4)]
    assert blocks(3, 3) == [(0,), (1,), (2,)]


def _cases():
    rng = random.Random(0)
    for _ in range(60):
        n, w = rng.randint(1, 9), rng.randint(1, 6)
        replicate = rng.random() < 0.5
        cap = rng.choice([None, max(1, -(-n // w)), n])
        yield allocate(n, w, replicate, cap), n, {i: rng.randint(0, 2) for i in range(w)}


def test_every_active_student_runs_exactly_once_on_a_holder():
    for alloc, n, load in _cases():
        for k in range(1, n + 1):
            plan = workers_for(k, alloc, load)
            ran = list(itertools.chain.from_iterable(plan.values()))
            assert sorted(ran) == list(range(k)), (alloc, k, plan)
            for w, students in plan.items():
                assert set(students) <= set(alloc[w])
                # on each worker the active students are a prefix of its block (fused run)
                assert students == alloc[w][: len(students)]


def test_a_small_prefix_touches_one_worker():
    alloc = allocate(6, 3)
    assert workers_for(1, alloc) == {0: (0,)}
    assert workers_for(2, alloc) == {0: (0, 1)}
    assert workers_for(3, alloc) == {0: (0, 1), 1: (2,)}
    assert workers_for(6, alloc) == {0: (0, 1), 1: (2, 3), 2: (4, 5)}


def test_the_least_loaded_replica_is_chosen():
    alloc = allocate(4, 4, replicate=True, max_per_worker=2)  # [(0,1), (2,3), (0,1), (2,3)]
    assert workers_for(4, alloc) == {0: (0, 1), 1: (2, 3)}
    assert workers_for(4, alloc, {0: 1, 1: 0, 2: 0, 3: 1}) == {2: (0, 1), 1: (2, 3)}
    assert workers_for(2, alloc, {0: 2, 2: 1}) == {2: (0, 1)}


def test_k_outside_the_cohort_is_refused():
    with pytest.raises(ConfigError, match="k=5 is outside 1..4"):
        workers_for(5, allocate(4, 2))
    with pytest.raises(ConfigError):
        workers_for(0, allocate(4, 2))


def test_cpu_slots_split_the_cores_into_pinned_groups():
    slots = plan_slots(2, "cpu", threads=None, cores=[0, 1, 2, 3])
    assert [(s.cores, s.threads) for s in slots] == [((0, 1), 2), ((2, 3), 2)]
    slots = plan_slots(2, "cpu", threads=1, cores=[4, 5])
    assert [s.cores for s in slots] == [(4,), (5,)]
    slots = plan_slots(3, "cpu", threads=None, cores=[0, 1])  # oversubscribed: wraps
    assert [s.cores for s in slots] == [(0,), (1,), (0,)]


def test_gpu_slots_share_gpus_by_procs_per_gpu():
    slots = plan_slots(4, "cuda", threads=None, cores=[0], n_gpus=2, procs_per_gpu=2)
    assert [s.device for s in slots] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    slots = plan_slots(2, "cuda:1", threads=None, cores=[0], n_gpus=2, procs_per_gpu=2)
    assert [s.device for s in slots] == ["cuda:1", "cuda:1"]
    with pytest.raises(ConfigError, match="no CUDA device"):
        plan_slots(1, "cuda", threads=None, cores=[0], n_gpus=0)
    with pytest.raises(ConfigError, match="unknown"):
        plan_slots(1, "tpu", threads=None, cores=[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"device": "gpu"}, "device='gpu'"),
        ({"workers": -1}, "workers=-1"),
        ({"threads": 0}, "threads=0"),
        ({"dtype": "float16"}, "dtype='float16'"),
        ({"procs_per_gpu": 0}, "procs_per_gpu=0"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"retries": -1}, "retries=-1"),
        ({"max_students_per_worker": 0}, "max_students"),
    ],
)
def test_runtime_config_names_the_bad_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RuntimeConfig(**kwargs)
