"""Worker processes: same logits as in-process, crashes detected, restarted, never lost.

Two worker processes (one pinned core each) serve a tiny cohort saved to a temporary folder.
Crashes are injected through the pool's ``dispatch_hook``: the worker is stopped (SIGSTOP)
just before a batch is sent to it and killed (SIGKILL) just after, so it dies holding the batch
whatever the timing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

from shoal.models.cohort import ShoalModel
from shoal.serve.runtime import (
    LocalRunner,
    ProfileConfig,
    Runtime,
    RuntimeConfig,
    WorkerCrashed,
    WorkerError,
    WorkerPool,
)

N = 4
TEXTS = ["good movie", "the plot was very very bad and sad", "a", "not so great but fine film"]

PARENT_SPINCOUNT = os.environ.get("GOMP_SPINCOUNT")  # as the test session started


def _save_cohort(teacher_dir, folder, head_per_student: bool = False, combine: str = "sum"):
    teacher = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    torch.manual_seed(1)
    model = ShoalModel.from_teacher(
        teacher, N, 2, "spread", head_per_student=head_per_student
    ).eval()
    if combine != "sum":
        state = model.state_dict()
        model = ShoalModel(replace(model.config, combine=combine)).eval()
        model.load_state_dict(state)
    with torch.no_grad():
        model.alpha.copy_(torch.linspace(1.0, 0.3, N))
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder, BertTokenizerFast.from_pretrained(teacher_dir))
    return folder


@pytest.fixture(scope="module")
def cohort_dir(tiny_teacher, tmp_path_factory):
    return _save_cohort(tiny_teacher, tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def batch(cohort_dir):
    tok = BertTokenizerFast.from_pretrained(cohort_dir)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


@pytest.fixture(scope="module")
def reference(cohort_dir):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LocalRunner(ShoalModel.from_pretrained(cohort_dir))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runtime(cohort_dir, tmp_path_factory):
    config = RuntimeConfig(
        workers=2, threads=1, request_timeout_s=60, startup_timeout_s=120, omp_spincount=1000
    )
    grid = ProfileConfig(ks=(1, N), batches=(1,), lengths=(8,), repeats=1)
    rt = Runtime.start(
        cohort_dir, config, profile=grid, cache_dir=tmp_path_factory.mktemp("profiles")
    )
    yield rt
    rt.close()


def _stop_then_kill(phase: str, pid: int, killed: list[int]) -> None:
    """Freeze the worker before the batch is sent, kill it once the batch is in its pipe."""
    if phase == "before_send":
        os.kill(pid, signal.SIGSTOP)
    else:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


def _pool(runtime) -> WorkerPool:
    assert isinstance(runtime.executor, WorkerPool)
    return runtime.executor


def test_workers_are_pinned_and_hold_contiguous_blocks(runtime):
    status = _pool(runtime).status()
    assert [s.students for s in status] == [(0, 1), (2, 3)]
    assert all(s.alive and s.pid != os.getpid() for s in status)
    if len(os.sched_getaffinity(0)) >= 2:
        assert status[0].cores != status[1].cores
    for s in status:
        assert os.sched_getaffinity(s.pid) == set(s.cores)
        env = Path(f"/proc/{s.pid}/environ").read_bytes().split(b"\0")
        assert b"OMP_NUM_THREADS=1" in env and b"GOMP_SPINCOUNT=1000" in env
    # the parent's environment is restored
    assert os.environ.get("GOMP_SPINCOUNT") == PARENT_SPINCOUNT
    assert runtime.cost_model is not None and runtime.cost_model.ks == (1, N)


def test_multi_worker_output_equals_in_process_for_every_k(runtime, reference, batch):
    for k in reversed(range(1, N + 1)):
        out = runtime.execute(*batch, k)
        torch.testing.assert_close(out, reference.run(*batch, k), rtol=1e-5, atol=1e-6)
        # the diagnostics name only the workers that ran this batch (students 0-1 on worker 0)
        assert set(_pool(runtime).last_worker_seconds) == ({0} if k <= 2 else {0, 1})


def test_sigint_and_sigterm_to_the_process_group_leave_workers_serving(runtime, reference, batch):
    before = {s.pid for s in _pool(runtime).status()}
    for s in _pool(runtime).status():  # what Ctrl+C, timeout or systemd send to every process
        os.kill(s.pid, signal.SIGINT)
        os.kill(s.pid, signal.SIGTERM)
    out = runtime.execute(*batch, N)
    torch.testing.assert_close(out, reference.run(*batch, N), rtol=1e-5, atol=1e-6)
    status = _pool(runtime).status()
    assert {s.pid for s in status} == before and all(s.alive for s in status)
    assert all(s.restarts == 0 for s in status)


def test_a_worker_killed_mid_batch_is_restarted_and_the_batch_retried(runtime, reference, batch):
    pool = _pool(runtime)
    before = pool.status()[1]
    killed: list[int] = []

    def kill_once(phase: str, pids: dict[int, int]) -> None:
        if not killed and 1 in pids:
            _stop_then_kill(phase, pids[1], killed)

    pool.dispatch_hook = kill_once
    try:
        out = runtime.execute(*batch, N)
    finally:
        pool.dispatch_hook = None
    assert killed == [before.pid]
    torch.testing.assert_close(out, reference.run(*batch, N), rtol=1e-5, atol=1e-6)
    after = pool.status()[1]
    assert after.alive and after.pid != before.pid and after.restarts == before.restarts + 1


def test_a_batch_whose_worker_keeps_dying_fails_clearly(runtime, reference, batch):
    pool = _pool(runtime)
    deaths: list[int] = []

    def kill_always(phase: str, pids: dict[int, int]) -> None:
        if 1 in pids:
            _stop_then_kill(phase, pids[1], deaths)

    pool.dispatch_hook = kill_always
    try:
        with pytest.raises(
            WorkerCrashed,
            match=r"worker 1 .*SIGKILL.*students \[2, 3\].*"
            r"tried 2 time\(s\), the batch failed",
        ):
            runtime.execute(*batch, N)
    finally:
        pool.dispatch_hook = None
    assert len(deaths) == 2  # the first try and one retry
    # The worker was restarted: the next batch succeeds.
    assert all(s.alive for s in pool.status())
    torch.testing.assert_close(
        runtime.execute(*batch, N), reference.run(*batch, N), rtol=1e-5, atol=1e-6
    )


def test_a_worker_that_died_idle_is_replaced_before_the_next_batch(runtime, reference, batch):
    pool = _pool(runtime)
    old = pool.status()[0].pid
    os.kill(old, signal.SIGKILL)
    # Whether the monitor or the health check gets there first, the worker is replaced.
    status = runtime.health()
    assert status[0].alive and status[0].pid != old
    torch.testing.assert_close(
        runtime.execute(*batch, 2), reference.run(*batch, 2), rtol=1e-5, atol=1e-6
    )


def test_a_restarted_worker_reads_as_down_until_it_has_loaded(runtime, reference, batch):
    worker = _pool(runtime)._workers[0]
    with worker.lock:  # as a restart holds it: the monitor and dispatches wait
        worker.stop(graceful=True)
        worker.spawn()
        loading = runtime.status()[0]
        worker.await_ready()
    assert loading.pid is not None and not loading.alive
    assert runtime.status()[0].alive
    torch.testing.assert_close(
        runtime.execute(*batch, N), reference.run(*batch, N), rtol=1e-5, atol=1e-6
    )


def test_an_error_inside_a_worker_is_reported_and_the_worker_survives(runtime, batch):
    ids, mask, types = batch
    pids = [s.pid for s in _pool(runtime).status()]
    with pytest.raises(WorkerError, match="IndexError|index out of range"):
        runtime.execute(ids + 10_000, mask, types, N)  # ids beyond the vocabulary
    assert [s.pid for s in _pool(runtime).status()] == pids
    assert runtime.execute(ids, mask, types, 1).shape == (4, 2)


def test_replicas_serve_concurrent_batches_and_close_leaves_no_processes(
    cohort_dir, reference, batch
):
    config = RuntimeConfig(workers=2, threads=1, replicate=True, health_interval_s=0)
    with WorkerPool(cohort_dir, config) as pool:
        assert pool.allocation == [tuple(range(N))] * 2
        results: dict[int, torch.Tensor] = {}
        go = threading.Barrier(4)

        def client(i: int) -> None:
            go.wait()
            results[i] = pool.run(*batch, 1 + i % N)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for i, out in results.items():
            torch.testing.assert_close(out, reference.run(*batch, 1 + i % N), rtol=1e-5, atol=1e-6)
        assert len(results) == 4
        procs = [w.process for w in pool._workers]
        assert all(p.is_alive() for p in procs)
    pool.close()  # idempotent
    assert not any(p.is_alive() for p in procs)
    assert not set(procs) & set(mp.active_children())


def test_logit_space_cohort_gives_the_same_logits_on_two_workers(tiny_teacher, tmp_path, batch):
    """With a head per student, workers return (B, C) contributions instead of (B, H)."""
    folder = _save_cohort(tiny_teacher, tmp_path / "lps", head_per_student=True)
    reference = LocalRunner(ShoalModel.from_pretrained(folder))
    with WorkerPool(folder, RuntimeConfig(workers=2, threads=1, health_interval_s=0)) as pool:
        for k in range(1, N + 1):
            torch.testing.assert_close(
                pool.run(*batch, k), reference.run(*batch, k), rtol=1e-5, atol=1e-6
            )


def test_averaged_cohort_gives_the_same_logits_on_two_workers(tiny_teacher, tmp_path, batch):
    """With combine='mean' every worker weighs its students by alpha / k for the active k."""
    folder = _save_cohort(tiny_teacher, tmp_path / "avg", combine="mean")
    reference = LocalRunner(ShoalModel.from_pretrained(folder))
    assert reference.model.config.combine == "mean"
    with WorkerPool(folder, RuntimeConfig(workers=2, threads=1, health_interval_s=0)) as pool:
        for k in range(1, N + 1):
            torch.testing.assert_close(
                pool.run(*batch, k), reference.run(*batch, k), rtol=1e-5, atol=1e-6
            )


def test_onnxruntime_workers_give_the_same_logits(tiny_teacher, tmp_path, batch):
    """Workers that run their students on ONNX Runtime agree with the in-process torch path."""
    folder = _save_cohort(tiny_teacher, tmp_path / "ort")
    reference = LocalRunner(ShoalModel.from_pretrained(folder))
    config = RuntimeConfig(workers=2, threads=1, health_interval_s=0, backend="onnxruntime")
    with WorkerPool(folder, config) as pool:
        for k in range(1, N + 1):
            torch.testing.assert_close(
                pool.run(*batch, k), reference.run(*batch, k), rtol=1e-4, atol=1e-5
            )
