"""The dashboard's per-second series: what the page plots, from request and batch records."""

from __future__ import annotations

from shoal.serve.api.dashboard import DashboardFeed, page


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
    assert "<canvas" in html and "dashboard/data" in html
    for remote in ("http://", "https://", "//cdn", "@import", "fonts.googleapis"):
        assert remote not in html
