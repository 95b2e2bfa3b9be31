"""A cohort whose weights hold a NaN is refused at start-up by the model self-check: ``shoal
serve`` exits with status 2 and one line naming the student, the prefix and the fix, never a
traceback, whichever runtime would have served it (in process, worker pool, ONNX Runtime)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port

START_TIMEOUT_S = 480
"""Generous: loading, spawning a worker and exporting ONNX graphs on a busy machine."""


@pytest.fixture(scope="module")
def nan_cohort(e2e_cohort, tmp_path_factory) -> Path:
    """The e2e cohort with one weight of its second student overwritten with NaN."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("nan_cohort") / "cohort"
    shutil.copytree(e2e_cohort, folder)
    weights = folder / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(weights)
    tensors["students.1.layers.0.ffn_out.weight"][0, 0] = float("nan")
    save_file(tensors, weights, metadata=metadata)
    return folder


def shoal_serve(cohort: Path, profile_cache: Path, out: Path, *flags: str) -> tuple[int, str]:
    """Run ``shoal serve COHORT`` (the CLI's own entry point) until it exits: its status and
    stderr. Fails at once if it starts answering ``/health`` instead."""
    port = free_port()
    code = "import sys; from shoal.cli import app; sys.argv[0] = 'shoal'; app()"
    command = [sys.executable, "-c", code, "serve", str(cohort), "--port", str(port)]
    command += ["--threads", "1", "--log-level", "warning", "--profile-cache", str(profile_cache)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(out / "stdout", "wb") as stdout, open(out / "stderr", "wb") as stderr:
        proc = subprocess.Popen(command + list(flags), stdout=stdout, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0, trust_env=False)
                pytest.fail("the server started serving a cohort with NaN weights")
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # start-up poll (imports, loading): no event to wait on
        assert proc.poll() is not None, f"still starting after {START_TIMEOUT_S} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = (out / "stderr").read_text() + (out / "stdout").read_text()
    assert "Traceback" not in text, text
    return proc.returncode, (out / "stderr").read_text()


@pytest.mark.parametrize(
    "flags",
    [(), ("--workers", "1"), ("--backend", "onnxruntime")],
    ids=["in-process", "worker-pool", "onnxruntime"],
)
def test_a_cohort_with_nan_weights_refuses_to_start(nan_cohort, profile_cache, tmp_path, flags):
    if "onnxruntime" in flags:
        pytest.importorskip("onnxruntime")
    status, stderr = shoal_serve(nan_cohort, profile_cache, tmp_path, *flags)
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0] == (
        f"error: cohort {nan_cohort}: student 2 gives non-finite logits (NaN) on the probe text "
        "and probe pair at k=2; the weights are corrupt: distil it again or restore "
        "model.safetensors"
    )
