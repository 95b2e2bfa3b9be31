"""The teacher's outputs on the training set: memory-mapped stores and a pass that resumes."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch

from shoal.data import encode, load_task
from shoal.distill import teacher_outputs
from shoal.distill.teacher_outputs import load_teacher_outputs
from shoal.distill.token_store import TokenStore
from shoal.models.teacher import load_teacher


def test_a_store_on_disk_round_trips_and_a_loaded_one_leaves_its_file_alone(tmp_path):
    lengths = [3, 1, 4]
    store = TokenStore.on_disk(tmp_path, "s", lengths, 5)
    rows = torch.randn(3, 4, 5)
    store.set_([0, 1, 2], rows)
    store.flush()
    loaded = TokenStore.load(tmp_path, "s")
    assert loaded.lengths.tolist() == lengths
    expected = rows.half().float()
    for i, n in enumerate(lengths):
        torch.testing.assert_close(loaded.gather([i])[0, :n], expected[i, :n])
    loaded.add_([1], torch.ones(1, 1, 5))  # copy on write: the file keeps the teacher's rows
    again = TokenStore.load(tmp_path, "s")
    torch.testing.assert_close(again.gather([1])[0, :1], expected[1, :1])


def test_reopening_a_store_of_another_shape_is_refused(tmp_path):
    TokenStore.on_disk(tmp_path, "s", [2, 2], 5)
    with pytest.raises(ValueError, match=r"expected \(4, 6\)"):
        TokenStore.on_disk(tmp_path, "s", [2, 2], 6, reopen=True)


class _Stop(Exception):
    pass


def _counting(teacher, fail_after: int | None = None) -> list[int]:
    """Count the teacher's forward calls; raise after ``fail_after`` of them."""
    calls: list[int] = []
    real = teacher.forward

    @functools.wraps(real)
    def forward(*a, **kw):
        if fail_after is not None and len(calls) == fail_after:
            raise _Stop
        calls.append(1)
        return real(*a, **kw)

    teacher.forward = forward
    return calls


def test_a_stopped_pass_continues_where_it_was_and_equals_an_uninterrupted_one(
    tmp_path, tiny_teacher, tiny_data, monkeypatch, capsys
):
    monkeypatch.setattr(teacher_outputs, "BATCH_SIZE", 8)
    monkeypatch.setattr(teacher_outputs, "PROGRESS_EVERY_S", 0.0)  # save after every batch
    teacher, tok = load_teacher(tiny_teacher)
    enc = encode(tok, load_task(tiny_data).splits["train"], 32)
    n_batches = -(-len(enc) // 8)
    assert n_batches > 3

    whole = load_teacher_outputs(tmp_path / "whole", teacher, enc, 1, 0)

    _counting(teacher, fail_after=3)
    with pytest.raises(_Stop):
        load_teacher_outputs(tmp_path / "cut", teacher, enc, 1, 0)
    folder = tmp_path / "cut" / "depth1"
    assert not (folder / "teacher.json").exists() and not (folder / "final.npy").exists()
    assert (folder / "final.partial.npy").is_file() and (folder / "progress.json").is_file()
    teacher, _ = load_teacher(tiny_teacher)
    calls = _counting(teacher)
    resumed = load_teacher_outputs(tmp_path / "cut", teacher, enc, 1, 0)
    assert len(calls) == n_batches - 3
    assert (
        f"resumed from {folder / 'progress.json'} at batch 3/{n_batches}" in capsys.readouterr().out
    )
    assert (folder / "teacher.json").is_file() and not (folder / "progress.json").exists()
    assert not list(folder.glob("*.partial*"))
    for a, b in ((whole.final, resumed.final), (whole.middle, resumed.middle)):
        assert torch.equal(a.data, b.data)
    assert torch.equal(whole.logits, resumed.logits)

    calls.clear()  # complete: loaded, not run again, and memory-mapped
    cached = load_teacher_outputs(tmp_path / "cut", teacher, enc, 1, 0)
    assert calls == [] and torch.equal(cached.final.data, whole.final.data)
    assert isinstance(np.load(folder / "final.npy", mmap_mode="r"), np.memmap)


def _stopped_after_two_batches(tmp_path, tiny_teacher, tiny_data, monkeypatch):
    """A pass of batches of 8 (progress saved after each) stopped after two; returns the
    encoded split and a fresh teacher whose forward calls are counted."""
    monkeypatch.setattr(teacher_outputs, "BATCH_SIZE", 8)
    monkeypatch.setattr(teacher_outputs, "PROGRESS_EVERY_S", 0.0)
    teacher, tok = load_teacher(tiny_teacher)
    enc = encode(tok, load_task(tiny_data).splits["train"], 32)
    _counting(teacher, fail_after=2)
    with pytest.raises(_Stop):
        load_teacher_outputs(tmp_path, teacher, enc, 1, 0)
    teacher, _ = load_teacher(tiny_teacher)
    return enc, teacher, _counting(teacher)


def test_a_stopped_pass_of_other_data_starts_again(tmp_path, tiny_teacher, tiny_data, monkeypatch):
    enc, teacher, calls = _stopped_after_two_batches(tmp_path, tiny_teacher, tiny_data, monkeypatch)
    load_teacher_outputs(tmp_path, teacher, enc, 1, 0, composed=[1, 0])  # another key
    assert len(calls) == -(-len(enc) // 8)


def test_a_pass_without_its_partial_stores_starts_again(
    tmp_path, tiny_teacher, tiny_data, monkeypatch
):
    enc, teacher, calls = _stopped_after_two_batches(tmp_path, tiny_teacher, tiny_data, monkeypatch)
    (tmp_path / "depth1" / "middle.partial.npy").unlink()  # lost: progress.json is not enough
    load_teacher_outputs(tmp_path, teacher, enc, 1, 0)
    assert len(calls) == -(-len(enc) // 8)


def test_a_run_reading_the_stores_keeps_them_when_another_pass_replaces_them(
    tmp_path, tiny_teacher, tiny_data
):
    teacher, tok = load_teacher(tiny_teacher)
    enc = encode(tok, load_task(tiny_data).splits["train"], 32)
    load_teacher_outputs(tmp_path, teacher, enc, 1, 0)
    reading = load_teacher_outputs(tmp_path, teacher, enc, 1, 0)  # mapped from the files
    before = reading.final.data.clone()
    half = encode(tok, load_task(tiny_data).splits["train"].subset(len(enc) // 2), 32)
    replaced = load_teacher_outputs(tmp_path, teacher, half, 1, 0)  # another key
    assert replaced.final.data.shape[0] < before.shape[0]
    assert torch.equal(reading.final.data, before)


def test_a_run_waits_for_another_writing_the_same_folder(
    tmp_path, tiny_teacher, tiny_data, monkeypatch
):
    from filelock import FileLock

    teacher, tok = load_teacher(tiny_teacher)
    enc = encode(tok, load_task(tiny_data).splits["train"], 32)
    calls = _counting(teacher)
    waiting = threading.Event()

    def write(message):
        if "waiting for another run" in message:
            waiting.set()

    monkeypatch.setattr(teacher_outputs.tqdm, "write", write)
    (tmp_path / "depth1").mkdir()
    other = FileLock(tmp_path / "depth1" / ".lock")
    other.acquire()
    done: list = []
    t = threading.Thread(
        target=lambda: done.append(load_teacher_outputs(tmp_path, teacher, enc, 1, 0))
    )
    t.start()
    assert waiting.wait(timeout=60)
    assert calls == [] and not done  # held back while the other run holds the folder
    other.release()
    t.join(timeout=120)
    assert len(done) == 1 and calls
