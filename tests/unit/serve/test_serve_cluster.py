"""The Ray Serve wiring that needs no Ray: placement options, the Serve config file, the
merged scrape, and the flags of ``shoal serve --ray``."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal.errors import ConfigError
from shoal.serve.cluster.config import APP_BUILDER, COORDINATOR, INGRESS, RayConfig
from shoal.serve.cluster.metrics import merge_expositions
from shoal.serve.server import ServeConfig


def test_fixed_replicas_and_placement():
    opts = RayConfig(replicas=3, cpus_per_replica=2, gpus_per_replica=0.5).ingress_options(12.0)
    assert opts["num_replicas"] == 3 and "autoscaling_config" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert opts["graceful_shutdown_timeout_s"] == 12.0
    assert opts["logging_config"]["enable_access_log"] is False


def test_autoscaling_bounds_start_within_them():
    cfg = RayConfig(replicas=2, min_replicas=1, max_replicas=4, target_ongoing_requests=8)
    scaling = cfg.ingress_options(30.0)["autoscaling_config"]
    assert "num_replicas" not in cfg.ingress_options(30.0)
    assert scaling["min_replicas"] == 1 and scaling["max_replicas"] == 4
    assert scaling["initial_replicas"] == 2 and scaling["target_ongoing_requests"] == 8
    assert RayConfig(replicas=9, max_replicas=3).autoscaling["initial_replicas"] == 3
    fast = RayConfig(max_replicas=2, autoscale_report_s=0.5, autoscale_window_s=3).autoscaling
    assert fast["metrics_interval_s"] == 0.5 and fast["look_back_period_s"] == 3


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"replicas": 0}, "replicas=0"),
        ({"min_replicas": 2}, "needs --max-replicas"),
        ({"max_replicas": 2, "autoscale_report_s": 10, "autoscale_window_s": 10}, "below"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas=3"),
        ({"gpus_per_replica": -1}, "gpus_per_replica=-1"),
        ({"max_queued_requests": 0}, "max_queued_requests=0"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests=0"),
    ],
)
def test_bad_placement_is_refused_with_the_value(kwargs, names):
    with pytest.raises(ConfigError, match=names):
        RayConfig(**kwargs)


def test_serve_config_file_names_the_builder_and_both_deployments():
    data = RayConfig(replicas=2, proxy="every-node").serve_config_file(
        "/models/c", {"port": 9000, "latency_target_ms": 50.0}
    )
    assert data["proxy_location"] == "EveryNode"
    assert data["http_options"] == {"host": "127.0.0.1", "port": 9000}
    (app,) = data["applications"]
    assert app["import_path"] == APP_BUILDER
    assert app["args"] == {
        "cohort": "/models/c",
        "serve": {"port": 9000, "latency_target_ms": 50.0},
    }
    ingress, coordinator = app["deployments"]
    assert ingress["name"] == INGRESS and ingress["num_replicas"] == 2
    assert coordinator == {
        "name": COORDINATOR,
        "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0},
    }


def _exposition(requests: int, depth: float) -> bytes:
    r = CollectorRegistry()
    Counter("shoal_requests", "Requests.", ["status"], registry=r).labels("200").inc(requests)
    Gauge("shoal_queue_depth", "Queue.", registry=r).set(depth)
    h = Histogram("shoal_request_duration_seconds", "Latency.", buckets=(0.01, 0.1), registry=r)
    for _ in range(requests):
        h.observe(0.05)
    return generate_latest(r)


def test_merged_scrape_keeps_names_and_labels_each_replica():
    text = merge_expositions({"a": ("n1", _exposition(3, 1)), "b": ("n2", _exposition(5, 0))})
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    one = {f.name for f in text_string_to_metric_families(_exposition(1, 0).decode())}
    assert set(families) == one and "shoal_requests" in one
    assert text.decode().count("# TYPE shoal_requests_total counter") == 1
    totals = {
        (s.labels["replica"], s.labels["node"]): s.value
        for s in families["shoal_requests"].samples
        if s.name == "shoal_requests_total"
    }
    assert totals == {("a", "n1"): 3.0, ("b", "n2"): 5.0}
    buckets = [
        s
        for s in families["shoal_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["le"] == "0.1"
    ]
    assert sorted(s.value for s in buckets) == [3.0, 5.0]


def test_merged_scrape_of_no_replica_is_empty():
    assert merge_expositions({}) == b""


def test_serve_options_pass_only_what_differs_and_match_the_placement():
    from shoal.serve.cluster.launch import serve_options

    opts = serve_options(ServeConfig(latency_target_ms=50.0), RayConfig(cpus_per_replica=2))
    assert opts == {"latency_target_ms": 50.0, "threads": 2}
    gpu = serve_options(ServeConfig(threads=1), RayConfig(gpus_per_replica=0.25))
    assert gpu == {"threads": 1, "device": "cuda"}


ROOT = Path(__file__).resolve().parents[3]


def test_deploy_files_name_the_builder_and_agree():
    yaml = pytest.importorskip("yaml")
    serve = yaml.safe_load((ROOT / "deploy/ray/serve.yaml").read_text())
    service = yaml.safe_load((ROOT / "deploy/ray/rayservice.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"] == serve["applications"]
    (app,) = serve["applications"]
    assert app["import_path"] == APP_BUILDER
    ServeConfig(**app["args"]["serve"])  # every option is a shoal serve option
    names = [d["name"] for d in app["deployments"]]
    assert names == [INGRESS, COORDINATOR]


def test_app_builder_binds_both_deployments_and_refuses_bad_args(tmp_path):
    pytest.importorskip("ray.serve", reason="needs ray[serve]")
    from shoal.serve.cluster.deployment import app_builder

    app = app_builder({"cohort": str(tmp_path), "serve": {"latency_target_ms": 40.0}})
    assert app._bound_deployment.name == INGRESS
    with pytest.raises(ConfigError, match="'cohort'"):
        app_builder({"serve": {}})
    with pytest.raises(ConfigError, match="bad 'serve' options"):
        app_builder({"cohort": str(tmp_path), "serve": {"no_such_flag": 1}})


def test_deploy_files_are_what_the_writer_writes():
    pytest.importorskip("yaml")
    import importlib.util

    spec = importlib.util.spec_from_file_location("w", ROOT / "scripts/write_ray_deploy.py")
    writer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writer)
    serve_text = writer.serve_file()
    stale = "stale: run python scripts/write_ray_deploy.py"
    assert (ROOT / "deploy/ray/serve.yaml").read_text() == serve_text, stale
    assert (ROOT / "deploy/ray/rayservice.yaml").read_text() == writer.rayservice_file(serve_text)


def test_an_address_nobody_answers_on_fails_fast_with_the_fix():
    import socket

    from shoal.errors import ShoalError
    from shoal.serve.cluster.launch import _check_reachable

    with socket.socket() as s:  # a port that is bound but not listening refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ShoalError, match="ray start --head"):
            _check_reachable(f"127.0.0.1:{port}")
    _check_reachable("auto")  # left to Ray: it knows where to look
    _check_reachable("ray://head:10001")
