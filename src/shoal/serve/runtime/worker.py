"""A worker process: pins itself to its slot, loads the cohort, serves partial sums over a pipe.

Messages are tuples of plain Python and numpy arrays (no torch tensors cross the pipe, so no
shared-memory file descriptors are passed around):

    parent -> worker   ("run", req_id, input_ids, attention_mask, token_type_ids, students, k)
                       ("ping", req_id)
                       ("stop",)
    worker -> parent   ("ready", info)             once, after loading and warming up
                       ("ok", req_id, partial, seconds)   (B, H) or (B, C) float32
                       ("pong", req_id)
                       ("error", req_id, message)  the worker raised but stays alive

The parent spawns this with the ``spawn`` start method (safe with threads and CUDA).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shoal.serve.runtime.allocation import Slot


def pin(slot: Slot) -> None:
    """Restrict every thread of this process to the slot's cores, before torch makes its pool.

    Linux applies ``sched_setaffinity`` per thread, so threads created at import time (if any)
    are pinned one by one; threads created later inherit the main thread's mask.
    """
    if not slot.cores or not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            os.sched_setaffinity(tid, slot.cores)


def worker_main(
    conn: Connection,
    cohort_dir: str,
    slot: Slot,
    dtype: str,
    students: tuple[int, ...],
    backend: str = "torch",
) -> None:
    """Entry point of a worker process; returns when told to stop or the parent goes away.

    The parent alone ends a worker (a "stop" message, EOF on the pipe, SIGKILL). SIGINT and
    SIGTERM are ignored: Ctrl+C, ``timeout`` and systemd signal the whole process group, and a
    worker that died with its server would be restarted while the server drains.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pin(slot)
    import torch

    from shoal.models.cohort import ShoalModel
    from shoal.serve.runtime.runner import LocalRunner

    torch.set_num_threads(slot.threads)
    if slot.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(slot.device))
    model = ShoalModel.from_pretrained(Path(cohort_dir), slot.device)
    runner = LocalRunner(model, slot.device, dtype, backend=backend)
    runner.warmup(students)
    conn.send(
        (
            "ready",
            {
                "pid": os.getpid(),
                "device": slot.device,
                "cores": slot.cores,
                "threads": torch.get_num_threads(),
                "students": students,
            },
        )
    )
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        op = msg[0]
        if op == "stop":
            return
        if op == "ping":
            conn.send(("pong", msg[1]))
            continue
        if op == "run":
            _, req_id, ids, mask, types, wanted, k = msg
            try:
                t0 = time.perf_counter()
                out = runner.partial(ids, mask, types, wanted, k).numpy()
                conn.send(("ok", req_id, out, time.perf_counter() - t0))
            except Exception:  # reported to the caller; the worker keeps serving
                conn.send(("error", req_id, traceback.format_exc(limit=8)))
            continue
        conn.send(("error", msg[1] if len(msg) > 1 else None, f"unknown op {op!r}"))


def describe(info: dict[str, Any]) -> str:
    """One line naming a worker for error messages."""
    where = info.get("device", "?")
    if info.get("cores"):
        where += f" cores {list(info['cores'])}"
    return f"pid {info.get('pid', '?')} on {where}"
