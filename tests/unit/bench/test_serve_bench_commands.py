"""Every benchmarked Shoal variant starts the real server with the flags it is named after."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shoal.bench.serve_bench import (
    ALL_SYSTEMS,
    PRUNING_SYSTEMS,
    ServeBenchConfig,
    server_command,
)
from shoal.serve.cluster.config import RayConfig
from shoal.serve.runtime.allocation import available_cores
from shoal.serve.server import ServeConfig, _parser


def _configs(cmd: list[str]) -> tuple[str, ServeConfig, RayConfig]:
    assert cmd[1:3] == ["-m", "shoal.serve.server"]
    args = vars(_parser().parse_args(cmd[3:]))
    ray = {f.name: args.pop(f.name) for f in dataclasses.fields(RayConfig)}
    return args.pop("cohort_dir"), ServeConfig(**args), RayConfig(**ray)


def _serve_config(cmd: list[str]) -> tuple[str, ServeConfig]:
    folder, config, ray = _configs(cmd)
    assert not ray.ray
    return folder, config


CONFIG = ServeBenchConfig(cohort="c", teacher="t", data="d", deep="deep", max_length=64)


@pytest.mark.parametrize(
    "system, expected",
    [
        ("shoal", {"pruning": True, "buffer": "length_aware", "backend": "torch"}),
        ("shoal-bf16", {"pruning": True, "buffer": "length_aware", "dtype": "bfloat16"}),
        ("shoal-onnx", {"pruning": True, "dtype": "float32", "backend": "onnxruntime"}),
        ("shoal-onnx-int8", {"pruning": True, "dtype": "int8", "backend": "onnxruntime"}),
        (
            "shoal-onnx-per-core",
            {"backend": "onnxruntime", "workers": len(available_cores()), "threads": 1},
        ),
        ("shoal-no-pruning", {"pruning": False, "buffer": "length_aware"}),
        ("shoal-fifo", {"pruning": False, "buffer": "fifo"}),
        ("deep-student", {"pruning": False}),
    ],
)
def test_shoal_variants_parse_into_the_server_config(system, expected):
    folder, config = _serve_config(server_command(system, CONFIG, 8123))
    assert folder == ("deep" if system == "deep-student" else "c")
    assert config.port == 8123 and config.max_length == 64
    for field, value in expected.items():
        assert getattr(config, field) == value, field
    assert (system in PRUNING_SYSTEMS) == config.pruning  # those get a burst timeline


@pytest.mark.parametrize(
    "system, replicas, cpus, threads, scaling",
    [
        ("shoal-ray", 1, 2.0, None, None),
        ("shoal-ray-2x1", 2, 1.0, 1, None),
        ("shoal-ray-autoscale", 1, 1.0, 1, (1, 2)),
    ],
)
def test_ray_systems_serve_the_same_server_on_ray(system, replicas, cpus, threads, scaling):
    folder, config, ray = _configs(server_command(system, CONFIG, 8123))
    assert folder == "c" and ray.ray and ray.ray_address is None  # a local Ray of their own
    assert (ray.replicas, ray.cpus_per_replica, config.threads) == (replicas, cpus, threads)
    auto = ray.autoscaling
    assert (None if auto is None else (auto["min_replicas"], auto["max_replicas"])) == scaling
    assert config.pruning and system in PRUNING_SYSTEMS


def test_infinity_serves_the_teacher_with_its_own_defaults(tmp_path):
    exe = tmp_path / "infinity_emb"
    exe.write_text("#!/bin/sh\n")
    cfg = ServeBenchConfig(
        cohort="c", teacher="t", data="d", systems=("infinity",), infinity=str(exe)
    )
    cmd = server_command("infinity", cfg, 8124)
    assert cmd[:2] == [str(exe), "v2"]
    assert cmd[cmd.index("--model-id") + 1] == str(Path("t").resolve())
    assert cmd[cmd.index("--port") + 1] == "8124" and "--batch-size" not in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_infinity_missing_names_the_setup_script(tmp_path):
    from shoal.errors import ConfigError

    with pytest.raises(ConfigError, match="setup_infinity.sh"):
        ServeBenchConfig(
            cohort="c", teacher="t", data="d", systems=("infinity",), infinity=str(tmp_path / "x")
        )


def test_every_system_has_a_command():
    for system in ALL_SYSTEMS:
        cmd = server_command(system, CONFIG, 8000)
        assert "--port" in cmd and cmd[cmd.index("--port") + 1] == "8000"


def test_unknown_load_generator_transport_is_refused():
    from shoal.errors import ConfigError

    with pytest.raises(ConfigError, match="client='curl'"):
        ServeBenchConfig(cohort="c", teacher="t", data="d", client="curl")  # type: ignore[arg-type]


def test_extra_flags_reach_every_shoal_server_and_no_teacher():
    config = ServeBenchConfig(
        cohort="c", teacher="t", data="d", deep="deep", extra_shoal_flags=("--headroom", "0.5")
    )
    _, served = _serve_config(server_command("shoal-onnx", config, 8000))
    assert served.headroom == 0.5 and served.backend == "onnxruntime"
    assert "--headroom" not in server_command("teacher-torch", config, 8000)


def test_extra_flags_override_the_system_s_own():
    config = ServeBenchConfig(
        cohort="c",
        teacher="t",
        data="d",
        systems=("shoal-ray-autoscale",),
        extra_shoal_flags=("--target-ongoing-requests", "2"),
    )
    _, _, ray = _configs(server_command("shoal-ray-autoscale", config, 8000))
    assert ray.target_ongoing_requests == 2


@pytest.mark.parametrize("burst_s, period_s", [(0.0, 12.0), (20.0, 12.0)])
def test_a_burst_outside_its_period_is_refused(burst_s, period_s):
    from shoal.errors import ConfigError

    with pytest.raises(ConfigError, match="burst_s"):
        ServeBenchConfig(cohort="c", teacher="t", data="d", burst_s=burst_s, period_s=period_s)
