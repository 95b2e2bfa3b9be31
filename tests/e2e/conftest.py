"""Real server processes on loopback: ``python -m shoal.serve.server COHORT --port N``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

API_KEY = "e2e-k3y"
LABELS = ["negative", "positive"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def e2e_cohort(tmp_path_factory, tiny_teacher) -> Path:
    """A tiny 3-student cohort folder with tokenizer and stored prefix accuracy."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from shoal.models.cohort import ShoalModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("e2e_cohort")
    model = ShoalModel.from_teacher(
        BertForSequenceClassification.from_pretrained(tiny_teacher), 3, 2, "spread"
    )
    model.meta = {
        "prefix_accuracy": [
            {"k": k, "dev_accuracy": 0.8 + 0.04 * k, "test_accuracy": 0.8 + 0.03 * k}
            for k in (1, 2, 3)
        ],
        "label_names": LABELS,
        "max_length": 32,
    }
    model.save_pretrained(folder, AutoTokenizer.from_pretrained(tiny_teacher))
    return folder


@pytest.fixture(scope="session")
def profile_cache(tmp_path_factory) -> Path:
    """Shared by every server of the session, so the cost model is measured once."""
    return tmp_path_factory.mktemp("profiles")


class ServerProcess:
    """One ``python -m shoal.serve.server`` child process; its output goes to ``log``."""

    def __init__(
        self,
        cohort: Path,
        log: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """``env``: extra environment variables; ``preexec_fn``: run in the child before it
        starts (resource limits)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shoal.serve.server",
                    str(cohort),
                    "--port",
                    str(self.port),
                    "--threads",
                    "1",
                    *flags,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=preexec_fn,
            )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # start-up poll (imports, profiling): no event to wait on
        raise TimeoutError(f"server not ready in {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code (killing it after ``timeout_s``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture(scope="session")
def start_server(e2e_cohort, profile_cache, tmp_path_factory) -> Iterator:
    """Factory: ``start_server(*flags)`` starts a ready server; all are stopped at the end."""
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess(e2e_cohort, log, "--profile-cache", str(profile_cache), *flags)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.terminate()


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def server(start_server) -> ServerProcess:
    """A server with an API key, shared by the route tests."""
    return start_server("--api-key", API_KEY, "--max-client-batch-size", "8")
