"""Servers under test as child processes: a free loopback port, a wait until ``/health``
answers 200, and a stop by SIGTERM (the server drains) with SIGKILL after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


class ServerFailed(RuntimeError):
    """The server exited, or did not become healthy in time; the message names its log."""


def free_port() -> int:
    """A loopback port nobody listens on (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 300.0) -> None:
    """Poll ``url/health`` until it answers 200; ``ServerFailed`` if ``proc`` exits first or
    ``timeout_s`` passes (start-up has no event to wait on: imports, profiling)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ServerFailed(f"server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ServerFailed(f"server not healthy after {timeout_s} s; see {log}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen, *, group: bool = False, grace_s: float = 60.0) -> int:
    """SIGTERM (to the whole process group with ``group``, for servers that start helpers
    such as a local Ray), then SIGKILL after ``grace_s``; the exit code."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        return proc.wait()
