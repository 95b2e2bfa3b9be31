"""The dashboard's per-second series: what the page plots, from request and batch records."""

from __future__ import annotations

import base64
import hashlib
import re
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from shoal.serve.api.dashboard import DashboardFeed, add_dashboard, page
from shoal.serve.policy import PolicyConfig


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_series_aggregate_each_second():
    clock = Clock(1000.2)
    feed = DashboardFeed(window_s=5, clock=clock)
    for ms in (10, 20, 30, 40):
        feed.observe_request(200, ms / 1e3)
    feed.observe_request(429, 0.001)
    feed.observe_batch(size=4, k=2, padded_tokens=40, real_tokens=30)
    feed.observe_batch(size=2, k=1, padded_tokens=20, real_tokens=20)
    feed.sample(queue_depth=7, k=1)
    clock.t = 1002.5  # a quiet second in between
    feed.observe_request(200, 0.005)
    s = feed.series()
    assert s["t"] == [998, 999, 1000, 1001, 1002]
    assert s["rps"] == [0, 0, 5, 0, 1]
    assert s["rejected_429"] == [0, 0, 1, 0, 0]
    assert s["p50_ms"][2] == 20.0 and s["p99_ms"][2] == 40.0  # 429s carry no latency
    assert s["p50_ms"][3] is None and s["p50_ms"][4] == 5.0
    assert s["batch_size"][2] == 3.0 and s["k"][2] == 1.5
    assert s["padding_share"][2] == round(1 - 50 / 60, 4)
    assert s["queue_depth"][2] == 7 and s["queue_depth"][3] is None


def test_old_seconds_leave_the_window():
    clock = Clock(50.0)
    feed = DashboardFeed(window_s=3, clock=clock)
    feed.observe_request(200, 0.01)
    clock.t = 60.0
    feed.observe_request(200, 0.01)
    assert sum(feed.series()["rps"]) == 1
    assert len(feed._seconds) == 1


def test_the_page_is_self_contained():
    html = page()
    assert 'el("canvas"' in html and "dashboard/data" in html
    for remote in ("http://", "https://", "//cdn", "@import", "fonts.googleapis"):
        assert remote not in html


def test_the_page_never_parses_data_as_markup():
    script = page().split("<script>", 1)[1]
    for sink in (
        "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
        "createContextualFragment", "DOMParser", "srcdoc", "eval(", "Function(", "setAttribute",
    ):  # fmt: skip
        assert sink not in script, sink
    assert 'style="' not in page()  # inline style attributes would need 'unsafe-inline'


def test_the_page_keeps_the_key_out_of_urls():
    script = page().split("<script>", 1)[1]
    assert "history.replaceState" in script  # ?key= leaves the address once read
    assert "Authorization" in script  # the feed gets it as a header...
    assert '"?key="' not in script and 'searchParams.set("key"' not in script  # ...only
    assert '<meta name="referrer" content="no-referrer">' in page()


def fake_app() -> FastAPI:
    policy = PolicyConfig(n_students=3, latency_target_s=0.05, prefix_accuracy=(0.8, 0.85, 0.9))
    engine = SimpleNamespace(
        subscribe=lambda observer: None,
        queue_depth=0,
        current_k=3,
        scheduler=SimpleNamespace(config=SimpleNamespace(policy=policy)),
    )
    info = SimpleNamespace(
        model_id="<b>m</b>", labels=["<i>neg</i>", "pos"], n_students=3, prefix_accuracy=[]
    )
    app = FastAPI()
    add_dashboard(app, engine, info, SimpleNamespace(request_listeners=[]))  # type: ignore[arg-type]
    return app


def csp_sources(header: str) -> dict[str, list[str]]:
    directives = [d.split() for d in header.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


def sha256_source(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


def test_the_page_is_served_with_a_strict_content_security_policy():
    answer = TestClient(fake_app()).get("/dashboard")
    assert answer.status_code == 200 and answer.text == page()
    csp = csp_sources(answer.headers["content-security-policy"])
    (script,) = re.findall(r"<script>(.*?)</script>", page(), flags=re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", page(), flags=re.DOTALL)
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == [sha256_source(script)]  # the page's own script, nothing else
    assert csp["style-src"] == [sha256_source(style)]
    assert csp["connect-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["base-uri"] == csp["form-action"] == csp["frame-ancestors"] == ["'none'"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["cache-control"] == "no-store"


def test_the_feed_is_json_never_sniffed_and_carries_the_labels():
    answer = TestClient(fake_app()).get("/dashboard/data")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["model_id"] == "<b>m</b>" and body["labels"] == ["<i>neg</i>", "pos"]
    assert body["policy"]["latency_target_s"] == 0.05 and "prefix_accuracy" not in body["policy"]
