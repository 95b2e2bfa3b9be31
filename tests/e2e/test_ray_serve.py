"""``shoal serve COHORT --ray`` on a local two-node Ray cluster (``ray.cluster_utils.Cluster``,
one CPU per node): the same answers as the single-host server, replicas on both nodes, one
merged scrape, and the faults a cluster has (a replica killed under load, a node removed,
SIGTERM on the application)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from tests.e2e.conftest import API_KEY, ServerProcess

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="needs ray[serve]")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEXTS = ["good fine", "bad awful movie", "great nice", "terrible", "a b c d e f g h"]
REPLICA_PROCESS = "ServeReplica:shoal:Cohort"


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    """Head and worker node, one CPU each: two one-CPU replicas must use both. The proxy runs
    on the head only, so it must not prefer the head's replica (as docs/ray.md says)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    c = ray_cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 * 1024**2},
    )
    c.worker = c.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
    c.wait_for_nodes()
    yield c
    c.shutdown()
    mp.undo()


class RayServer(ServerProcess):
    def wait_ready(self, timeout_s: float = 240.0) -> None:
        """Until ``serve.run`` returned (every replica up), not the first healthy one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if "through Ray Serve" in self.output():
                super().wait_ready(max(1.0, deadline - time.monotonic()))
                return
            time.sleep(0.5)  # replicas profile the cohort at start-up: nothing to wait on
        raise TimeoutError(f"not ready in {timeout_s} s:\n{self.output()}")


COMMON = ("--api-key", API_KEY, "--no-pruning", "--log-level", "warning")


@pytest.fixture(scope="module")
def single(e2e_cohort, profile_cache, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("single") / "server.log"
    s = ServerProcess(e2e_cohort, log, "--profile-cache", str(profile_cache), *COMMON)
    s.wait_ready()
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def on_ray(cluster, e2e_cohort, profile_cache, tmp_path_factory) -> Iterator[RayServer]:
    log = tmp_path_factory.mktemp("ray") / "server.log"
    s = RayServer(
        e2e_cohort,
        log,
        "--profile-cache",
        str(profile_cache),
        *COMMON,
        "--ray",
        "--ray-address",
        cluster.address,
        "--replicas",
        "2",
        "--cpus-per-replica",
        "1",
        "--drain-timeout-s",
        "20",
    )
    s.wait_ready()
    yield s
    if s.proc.poll() is None:
        s.terminate()


def _post(url: str, path: str, body: object, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=AUTH, timeout=30, trust_env=False, **kw)


def _merged_requests(url: str) -> dict[tuple[str, str], float]:
    """(replica, node) -> successful inference requests, from the merged scrape."""
    text = httpx.get(url + "/metrics", headers=AUTH, timeout=10, trust_env=False).text
    out = {}
    for m in re.finditer(
        r'^shoal_requests_total\{node="([^"]+)",replica="([^"]+)",status="200"\} (\S+)$',
        text,
        re.M,
    ):
        out[(m.group(2), m.group(1))] = float(m.group(3))
    return out


def test_routes_answer_as_the_single_host_server(single, on_ray):
    for path, body in [
        ("/predict", {"inputs": [[t] for t in TEXTS]}),
        ("/predict", {"inputs": TEXTS[0], "raw_scores": True}),
        ("/v1/classify", {"texts": TEXTS}),
        ("/", {"inputs": TEXTS[1]}),
        ("/invocations", {"inputs": TEXTS[2]}),
    ]:
        a, b = _post(single.url, path, body), _post(on_ray.url, path, body)
        assert a.status_code == b.status_code == 200, (path, a.text, b.text)
        assert b.headers["x-students-used"] == a.headers["x-students-used"] == "3"
        assert "x-total-time" in b.headers and len(b.headers.get_list("x-request-id")) == 1
        assert _rounded(a.json()) == _rounded(b.json()), path
    a_info = httpx.get(single.url + "/info", headers=AUTH, trust_env=False).json()
    b_info = httpx.get(on_ray.url + "/info", headers=AUTH, trust_env=False).json()
    for key in ("labels", "n_students", "student_layers", "prefix_accuracy", "max_input_length"):
        assert a_info[key] == b_info[key]
    assert httpx.get(on_ray.url + "/health", trust_env=False).json()["status"] == "ok"


def _rounded(data: object) -> object:
    """The answer with scores rounded and per-request timings left out."""
    if isinstance(data, float):
        return round(data, 5)
    if isinstance(data, list):
        return [_rounded(x) for x in data]
    if isinstance(data, dict):
        return {k: _rounded(v) for k, v in data.items() if not k.endswith("_time_ms")}
    return data


def test_errors_keep_their_codes_and_bodies(single, on_ray):
    cases = [
        (dict(json={"inputs": "x"}), 401),  # no key
        (dict(content=b"{not json", headers={**AUTH, "content-type": "application/json"}), 422),
        (dict(json={"inputs": [["good"]] * 33}, headers=AUTH), 413),
        (dict(json={"inputs": "   "}, headers=AUTH), 422),
    ]
    for kwargs, code in cases:
        a = httpx.post(single.url + "/predict", timeout=10, trust_env=False, **kwargs)
        b = httpx.post(on_ray.url + "/predict", timeout=10, trust_env=False, **kwargs)
        assert a.status_code == b.status_code == code
        assert a.json()["error_type"] == b.json()["error_type"]
        assert a.json()["error"] == b.json()["error"]
    r = httpx.get(on_ray.url + "/metrics", trust_env=False)
    assert r.status_code == 401


def test_replicas_on_both_nodes_serve_and_one_scrape_shows_them(cluster, on_ray):
    def send(_: int) -> int:
        return _post(on_ray.url, "/predict", {"inputs": TEXTS[0]}).status_code

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, range(80))) == {200}
    time.sleep(1.5)  # replicas report every second; the next report carries these requests
    served = _merged_requests(on_ray.url)
    nodes = {node for (_, node), n in served.items() if n > 0}
    assert len(served) == 2 and len(nodes) == 2, served
    assert sum(served.values()) >= 80


class Load:
    """Closed-loop clients in threads; every request's outcome: a status, or the transport
    error that left it without an answer."""

    def __init__(self, url: str, clients: int = 6) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url + "/predict", json={"inputs": TEXTS[1]}, headers=AUTH)
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                with self._lock:
                    self.outcomes[key] += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


ANSWERED = {"200", "500", "502", "503"}
"""A success, or a clear error the client may retry."""


def _replica_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", REPLICA_PROCESS], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)  # Ray's controller replaces replicas on its own schedule
    raise AssertionError(f"{what} within {timeout_s} s")


def test_a_killed_replica_loses_no_request_and_is_replaced(on_ray):
    before = set(_merged_requests(on_ray.url))
    pids = _replica_pids()
    assert len(pids) == 2
    with Load(on_ray.url) as load:
        time.sleep(2)
        subprocess.run(["kill", "-9", str(pids[0])], check=True)
        time.sleep(4)
    assert set(load.outcomes) <= ANSWERED, load.outcomes
    assert load.outcomes["200"] > 0

    def replaced() -> bool:
        _post(on_ray.url, "/predict", {"inputs": TEXTS[0]})
        return len(_replica_pids()) == 2 and set(_merged_requests(on_ray.url)) - before != set()

    _wait_for(replaced, 120, "a new replica serving")
    assert _post(on_ray.url, "/predict", {"inputs": TEXTS[0]}).status_code == 200


def test_the_other_node_serves_when_a_node_is_removed(cluster, on_ray):
    with Load(on_ray.url) as load:
        time.sleep(1)
        cluster.remove_node(cluster.worker)
        time.sleep(6)
    assert set(load.outcomes) <= ANSWERED, load.outcomes
    ok_after = [_post(on_ray.url, "/predict", {"inputs": TEXTS[0]}).status_code for _ in range(10)]
    assert ok_after == [200] * 10


def test_sigterm_drains_every_accepted_request(on_ray):
    with Load(on_ray.url, clients=8) as load:
        time.sleep(1.5)
        on_ray.proc.send_signal(15)
        code = on_ray.proc.wait(90)
    assert code == 0, on_ray.output()[-3000:]
    # accepted requests are answered (200); during the drain new ones get 503; once the
    # application is deleted, the cluster's proxy (Serve stays up on a shared cluster)
    # answers 404 for its routes
    assert load.outcomes["200"] > 0 and load.outcomes["503"] > 0, load.outcomes
    assert set(load.outcomes) <= ANSWERED | {"404", "ConnectError"}, load.outcomes


def test_ray_flags_without_ray_are_refused(e2e_cohort):
    out = subprocess.run(
        [sys.executable, "-m", "shoal.serve.server", str(e2e_cohort), "--replicas", "2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "--replicas only apply with --ray" in out.stderr
