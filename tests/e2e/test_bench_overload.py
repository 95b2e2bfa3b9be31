"""The overload experiment end to end on the tiny cohort, kept short: the default-flags
burst and the soak report their checks, memory, open files and the idle-socket probe."""

from __future__ import annotations

import pytest

from shoal.bench.overload import OverloadConfig, run_overload

pytestmark = pytest.mark.slow


def test_default_flags_burst_and_soak_report_their_checks(e2e_cohort, tiny_data, tmp_path):
    report = run_overload(
        OverloadConfig(
            cohort=str(e2e_cohort),
            data=str(tiny_data),
            out=str(tmp_path),
            probe_s=2.0,
            probe_concurrency=8,
            burst_s=2.0,
            base_s=1.0,
            tuned=False,
            default_flags=True,
            soak_s=4.0,
            idle_sockets=50,
            extra_flags=("--threads", "1", "--log-level", "warning"),
        )
    )
    (run,) = report["runs"]
    assert run["name"] == "default_flags" and run["queue_capacity"] >= 1
    assert run["checks"]["one_record_per_request"] and run["checks"]["only_200_or_429"]
    assert run["checks"]["server_counts_agree"] and run["checks"]["clean_exit"]
    soak = report["soak"]
    assert soak["requests"] == soak["summary"]["requests"] > 0
    assert soak["idle_sockets"]["opened"] == 50 and soak["idle_sockets"]["survived"]
    assert soak["checks"]["only_200"] and soak["checks"]["no_hang"] and soak["checks"]["clean_exit"]
    assert soak["rss_mb"]["max"] > 0 and soak["open_files"]["max"] >= soak["open_files"]["min"] > 0
    assert (tmp_path / "overload.json").is_file()
