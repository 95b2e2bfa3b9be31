"""The teacher's outputs on the training set (final and intermediate hidden states, logits),
computed once per teacher, data and depth, and kept on disk under one key.

The states are written straight into memory-mapped files, so an augmented split whose states
outgrow host memory still fits, and the pass over it saves its progress every
``PROGRESS_EVERY_S`` seconds: a run stopped in the middle of it starts again where it was.
Runs sharing a cache folder take turns: one runs the teacher, the others wait and read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn
from tqdm.auto import tqdm

from shoal.data import Encoded, bucketed_batches, collate
from shoal.devices import model_device, to_device
from shoal.distill.token_store import TokenStore
from shoal.files import write_json_atomic
from shoal.models.teacher import input_names

BATCH_SIZE = 128
PROGRESS_EVERY_S = 60.0  # how often a pass over the training set saves what it has done


@dataclass
class TeacherCache:
    """The teacher's outputs on the training set, computed once."""

    final: TokenStore  # (n_tokens, H) last hidden states
    middle: TokenStore  # (n_tokens, H) hidden states at the students' intermediate depth
    logits: torch.Tensor  # (N, C)
    late: TokenStore | None = None
    """(n_tokens, H) the input of the teacher's last layer, kept when attention relations are
    distilled (``--w-rel``): the last layer's queries, keys and values are computed from it."""
    late_layer: nn.Module | None = None
    """A frozen copy of the teacher's last layer (its ``query``, ``key`` and ``value`` read
    ``late``); set by the run that distils attention relations."""


@torch.inference_mode()
def cache_teacher(
    teacher: nn.Module,
    enc: Encoded,
    depth: int,
    pad_id: int,
    folder: Path,
    key: dict,
    bf16: bool = False,
    late: bool = False,
) -> TeacherCache:
    """Run the teacher over a split into memory-mapped ``*.partial`` stores under ``folder``,
    continuing a pass with the same ``key`` that was stopped; with ``bf16`` its matmuls run in
    bfloat16 autocast (the outputs are stored as without it: float16 states, float32
    logits); with ``late`` the input of its last layer is stored too."""
    progress = folder / "progress.json"
    done = _progress(progress, key)
    names = ("final", "middle", "logits", *(("late",) if late else ()))
    if not all((folder / f"{n}.partial.npy").is_file() for n in names):
        done = 0
    hidden, n_labels = teacher.config.hidden_size, teacher.config.num_labels
    lengths = enc.lengths()
    final = TokenStore.on_disk(folder, "final.partial", lengths, hidden, reopen=done > 0)
    middle = TokenStore.on_disk(folder, "middle.partial", lengths, hidden, reopen=done > 0)
    last = (
        TokenStore.on_disk(folder, "late.partial", lengths, hidden, reopen=done > 0)
        if late
        else None
    )
    stores = [final, middle, *([last] if last is not None else [])]
    logits = _logits_file(folder / "logits.partial.npy", (len(enc), n_labels), done > 0)
    batches = bucketed_batches(lengths, BATCH_SIZE, shuffle=False)
    if done:
        tqdm.write(f"[teacher outputs] resumed from {progress} at batch {done}/{len(batches)}")
    teacher.eval()
    dev = model_device(teacher)
    inputs = input_names(teacher)
    bar = tqdm(
        total=len(enc), initial=sum(len(b) for b in batches[:done]),
        desc="teacher outputs", unit="ex", dynamic_ncols=True,
    )  # fmt: skip
    saved = time.monotonic()
    for i in range(done, len(batches)):
        b = to_device(collate(enc, batches[i], pad_id), dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = teacher(**{n: b[n] for n in inputs}, output_hidden_states=True)
        idx = b["index"].tolist()
        final.set_(idx, out.hidden_states[-1])
        middle.set_(idx, out.hidden_states[depth])
        if last is not None:
            last.set_(idx, out.hidden_states[-2])
        logits[idx] = out.logits.float().cpu().numpy()
        bar.update(len(idx))
        if time.monotonic() - saved >= PROGRESS_EVERY_S:
            _save_progress(progress, key, i + 1, *stores, logits)
            saved = time.monotonic()
    bar.close()
    _save_progress(progress, key, len(batches), *stores, logits)
    return TeacherCache(final, middle, torch.from_numpy(np.array(logits)), last)


def _logits_file(file: Path, shape: tuple[int, int], reopen: bool) -> np.memmap:
    if reopen:
        return np.load(file, mmap_mode="r+")
    return np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=shape)


def _progress(file: Path, key: dict) -> int:
    """Batches a stopped pass with the same key finished (0: none, or another key's)."""
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError):
        return 0
    return int(saved["batches"]) if saved.get("key") == key else 0


def _save_progress(file: Path, key: dict, batches: int, *stores) -> None:
    """Flush the stores, then record how far they are written (atomically)."""
    for s in stores:
        s.flush()
    write_json_atomic(file, {"key": key, "batches": batches})


def load_teacher_outputs(
    folder: Path,
    teacher,
    enc: Encoded,
    depth: int,
    pad: int,
    augment: list | None = None,
    swapped: bool = False,
    composed: list | None = None,
    unlabeled: list | None = None,
    bf16: bool = False,
    late: bool = False,
) -> TeacherCache:
    """Load the cached teacher outputs, or run the teacher once (in bfloat16 autocast with
    ``bf16``), continuing a pass that was stopped, and mark them complete. With ``late`` the
    input of the teacher's last layer is kept too; a cache that holds it also serves runs
    that do not ask for it."""
    key = {
        "n": len(enc),
        "tokens": sum(enc.lengths()),
        "depth": depth,
        "teacher": str(teacher.name_or_path),
    }
    if augment:
        key["augment"] = augment
    if swapped:
        key["swap_pairs"] = True
    if composed:
        key["compose"] = composed
    if unlabeled:
        key["unlabeled"] = unlabeled
    if bf16:
        key["precision"] = "bf16"
    folder = folder / f"depth{depth}"
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        tqdm.write(f"[teacher outputs] waiting for another run writing {folder}")
        lock.acquire()
    try:
        return _load_or_run(folder, key, teacher, enc, depth, pad, bf16, late)
    finally:
        lock.release()


def _load_or_run(
    folder: Path, key: dict, teacher, enc: Encoded, depth: int, pad: int, bf16: bool, late: bool
) -> TeacherCache:
    meta = folder / "teacher.json"
    stores = TokenStore.saved(folder, "final") and TokenStore.saved(folder, "middle")
    complete = stores and (folder / "logits.pt").is_file() and meta.is_file()
    saved = json.loads(meta.read_text()) if complete else None
    has_late = saved is not None and saved.pop("late", False) and TokenStore.saved(folder, "late")
    if saved == key and (has_late or not late):
        return TeacherCache(
            TokenStore.load(folder, "final"),
            TokenStore.load(folder, "middle"),
            torch.load(folder / "logits.pt"),
            TokenStore.load(folder, "late") if has_late else None,
        )
    meta.unlink(missing_ok=True)
    key = {**key, "late": True} if late else key  # what the finished pass records
    cache = cache_teacher(teacher, enc, depth, pad, folder, key, bf16, late)
    torch.save(cache.logits, folder / "logits.pt")
    # New names, not rewritten files: a run still reading the stores a finished pass left
    # here keeps them (its mapping outlives the name).
    for name in ("final", "middle", *(("late",) if late else ())):
        for suffix in (".npy", ".lengths.npy"):
            os.replace(folder / f"{name}.partial{suffix}", folder / f"{name}{suffix}")
    write_json_atomic(meta, key)
    for partial in ("progress.json", "logits.partial.npy"):
        (folder / partial).unlink(missing_ok=True)
    return cache
