"""A worker process: pins itself to its slot, loads the cohort, serves partial sums over a pipe.

The messages it reads and writes are the dataclasses of ``messages``. The parent spawns this
with the ``spawn`` start method (safe with threads and CUDA).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.serve.runtime.allocation import Slot
from shoal.serve.runtime.messages import Done, Failed, Ping, Pong, Ready, Run, Stop

if TYPE_CHECKING:
    from shoal.serve.runtime.runner import LocalRunner


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

    The parent alone ends a worker (a ``Stop`` message, EOF on the pipe, SIGKILL). SIGINT and
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
        Ready(
            {
                "pid": os.getpid(),
                "device": slot.device,
                "cores": slot.cores,
                "threads": torch.get_num_threads(),
                "students": students,
            }
        )
    )
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        if isinstance(msg, Stop):
            return
        if isinstance(msg, Ping):
            conn.send(Pong(msg.req_id))
        elif isinstance(msg, Run):
            conn.send(_run(runner, msg))
        else:
            conn.send(Failed(getattr(msg, "req_id", None), f"unknown message {msg!r}"))


def _run(runner: LocalRunner, msg: Run) -> Done | Failed:
    """The partial sum ``msg`` asks for, or the traceback (the worker keeps serving)."""
    b = msg.batch
    try:
        t0 = time.perf_counter()
        out = runner.partial_sum(b.input_ids, b.attention_mask, b.token_type_ids, msg.students, b.k)
        return Done(msg.req_id, out.numpy(), time.perf_counter() - t0)
    except Exception:
        return Failed(msg.req_id, traceback.format_exc(limit=8))


def describe(info: dict[str, Any]) -> str:
    """One line naming a worker for error messages."""
    where = info.get("device", "?")
    if info.get("cores"):
        where += f" cores {list(info['cores'])}"
    return f"pid {info.get('pid', '?')} on {where}"
