"""Monitoring as users run it: deploy/'s Prometheus config, alert rules and their unit tests
under promtool; a real Prometheus scraping a real server on loopback; every metric the rules
and the Grafana dashboard name is one the server exposes."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "shoal-dashboard.json"
P99 = "histogram_quantile(0.99, sum by (le) (rate(shoal_request_latency_seconds_bucket[30s])))"
NOT_YET_EXPOSED = ("shoal_worker_restarts_total", "shoal_workers_alive")
METRIC_NAME = re.compile(r"\bshoal_[a-z0-9_]+")
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$job": ".*", "$instance": ".*"}
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def _needs(binary: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(binary) is None,
        reason=f"{binary} not on PATH (Debian package `prometheus`; scripts/setup.sh installs it)",
    )


needs_promtool = _needs("promtool")
needs_prometheus = _needs("prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs + [v["definition"] for v in dash["templating"]["list"]]


def runnable(query: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus's API takes it."""
    query = re.sub(r"^label_values\((.*), *\w+\)$", r"\1", query)
    for name, value in GRAFANA_VARIABLES.items():
        query = query.replace(name, value)
    return query


def exposed_names(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition, with those its ``# TYPE`` lines declare
    (a labelled counter shows no sample before its first increment)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] not in "#"}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ")
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + suffix for suffix in SAMPLE_SUFFIXES.get(kind, ("",)))
    return names - {""}


@needs_promtool
@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=" ".join,
)
def test_promtool_accepts_deploy_files(args):
    done = subprocess.run(
        ["promtool", *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_imports_with_a_prometheus_input():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert p["targets"] and all(
            t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]
        )
    used = set(METRIC_NAME.findall(" ".join(dashboard_queries())))
    for name in (
        "shoal_requests_total",
        "shoal_request_latency_seconds_bucket",
        "shoal_queue_depth",
        "shoal_active_students",
        "shoal_batch_size_bucket",
        "shoal_rejected_total",
        "shoal_worker_restarts_total",
        "shoal_workers_alive",
    ):
        assert name in used


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def get(self, path: str, **params: str) -> dict:
        resp = httpx.get(self.url + path, params=params, timeout=10, trust_env=False)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        return self.get("/api/v1/query", query=promql)["result"]


@pytest.fixture(scope="module")
def monitored_server(start_server):
    return start_server()


@pytest.fixture(scope="module")
def prometheus(monitored_server, tmp_path_factory) -> Iterator[Prometheus]:
    """deploy/prometheus/prometheus.yml pointed at the server, scraping every second."""
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{monitored_server.port}"]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = folder / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "prometheus not ready:\n" + log.read_text()
            try:
                if httpx.get(prom.url + "/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # start-up poll: no event to wait on
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_prometheus
def test_prometheus_scrapes_p99_latency(prometheus, monitored_server):
    """Requests go to the server until Prometheus's p99 over 30 s is a number."""
    deadline = time.monotonic() + 45
    with httpx.Client(base_url=monitored_server.url, timeout=10, trust_env=False) as client:
        while True:
            for text in ("a good movie", "bad plot, worse acting", "fine"):
                assert client.post("/predict", json={"inputs": text}).status_code == 200
            result = prometheus.query(P99)
            if result and math.isfinite(value := float(result[0]["value"][1])):
                break
            assert time.monotonic() < deadline, f"no p99 from Prometheus: {result}"
            time.sleep(0.25)  # between scrapes (1 s): no event to wait on
    assert 0 < value < 10
    (up,) = prometheus.query('up{job="shoal"}')
    assert up["value"][1] == "1"


@needs_prometheus
def test_prometheus_loads_every_alert_rule(prometheus):
    groups = prometheus.get("/api/v1/rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in alert_rules()}
    assert all(r["health"] != "err" for r in loaded.values()), loaded


@needs_prometheus
def test_prometheus_evaluates_every_dashboard_query(prometheus):
    for query in dashboard_queries():
        prometheus.query(runnable(query))


def test_rules_and_dashboard_name_only_exposed_metrics(monitored_server):
    with httpx.Client(base_url=monitored_server.url, timeout=10, trust_env=False) as client:
        assert client.post("/predict", json={"inputs": "a good movie"}).status_code == 200
        text = client.get("/metrics").text
    exprs = [r["expr"] for r in alert_rules()] + dashboard_queries()
    used = set(METRIC_NAME.findall(" ".join(exprs)))
    assert {"shoal_request_latency_seconds_bucket", "shoal_active_students"} <= used
    missing = used - exposed_names(text)
    assert missing <= set(NOT_YET_EXPOSED), sorted(missing)
