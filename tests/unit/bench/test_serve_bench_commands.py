"""Every benchmarked Shoal variant starts the real server with the flags it is named after."""

from __future__ import annotations

import pytest

from shoal.bench.serve_bench import (
    ALL_SYSTEMS,
    PRUNING_SYSTEMS,
    ServeBenchConfig,
    server_command,
)
from shoal.serve.runtime.allocation import available_cores
from shoal.serve.server import ServeConfig, _parser


def _serve_config(cmd: list[str]) -> tuple[str, ServeConfig]:
    assert cmd[1:3] == ["-m", "shoal.serve.server"]
    args = vars(_parser().parse_args(cmd[3:]))
    return args.pop("cohort_dir"), ServeConfig(**args)


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
