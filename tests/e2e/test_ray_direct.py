"""``shoal serve COHORT --ray --proxy direct`` on a local Ray it starts itself: each replica
answers HTTP on a port of its own (the first free one from --port + 1) as the head's proxy
does, and the ready line names that address."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.e2e.test_ray_serve import AUTH, COMMON, TEXTS, RayServer, _rounded

from shoal.serve.cluster.config import DIRECT_PORTS

pytest.importorskip("ray.serve", reason="needs ray[serve]")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_replica_answers_on_its_own_port_as_through_the_proxy(
    e2e_cohort, profile_cache, tmp_path
):
    s = RayServer(
        e2e_cohort,
        tmp_path / "server.log",
        "--profile-cache",
        str(profile_cache),
        *COMMON,
        "--ray",
        "--proxy",
        "direct",
        "--cpus-per-replica",
        "1",
        env={"RAY_ADDRESS": ""},
    )
    try:
        s.wait_ready()
        found = re.search(r"replicas answer directly at (http://127\.0\.0\.1:(\d+))\n", s.output())
        assert found, s.output()
        replica, port = found.group(1), int(found.group(2))
        # Serve takes the first port of the range it can bind; another process may hold one
        assert s.port < port <= s.port + 1 + DIRECT_PORTS
        for path, body in [
            ("/predict", {"inputs": [[t] for t in TEXTS]}),
            ("/v1/classify", {"texts": TEXTS}),
            ("/", {"inputs": TEXTS[1]}),
        ]:
            a, b = (
                httpx.post(url + path, json=body, headers=AUTH, timeout=30, trust_env=False)
                for url in (s.url, replica)
            )
            assert a.status_code == b.status_code == 200, (path, a.text, b.text)
            assert a.headers["x-students-used"] == b.headers["x-students-used"] == "3"
            assert _rounded(a.json()) == _rounded(b.json()), path
        a, b = (
            httpx.post(url + "/predict", json={"inputs": "x"}, timeout=30, trust_env=False)
            for url in (s.url, replica)
        )
        assert a.status_code == b.status_code == 401 and a.json() == b.json()
        assert httpx.get(replica + "/health", trust_env=False).json()["status"] == "ok"
    finally:
        s.terminate()
    assert s.proc.returncode == 0, s.output()
