"""Start-up helpers of ``shoal serve`` without a model: the API key's sources, derived limits,
the file-descriptor check and the log throttle."""

from __future__ import annotations

import logging

import pytest

from shoal.errors import ConfigError
from shoal.serve.connections import Throttle, fd_limit_warning
from shoal.serve.costmodel import CostModel
from shoal.serve.server import ServeConfig, derived_queue_capacity, resolve_api_key


def test_api_key_from_file_or_environment_once(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  fr0m-file\n")
    from_file = resolve_api_key(ServeConfig(api_key_file=str(key_file)), {})
    assert from_file.api_key == "fr0m-file" and from_file.api_key_file is None
    assert resolve_api_key(ServeConfig(), {"SHOAL_API_KEY": "fr0m-env"}).api_key == "fr0m-env"
    assert resolve_api_key(ServeConfig(), {}).api_key is None
    with pytest.raises(ConfigError, match="--api-key and SHOAL_API_KEY"):
        resolve_api_key(ServeConfig(api_key="a"), {"SHOAL_API_KEY": "b"})
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        resolve_api_key(ServeConfig(api_key_file=str(tmp_path / "none")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key(ServeConfig(api_key_file=str(tmp_path / "empty")), {})
    assert resolve_api_key(ServeConfig(api_key="x"), {}).public()["api_key"] == "***"


def test_body_limit_fits_the_request_limits():
    config = ServeConfig()
    texts = config.max_client_batch_size * 2 * config.max_input_chars
    # a text as json.dumps escapes it: 12 bytes for a character outside the BMP
    assert texts * 12 < config.body_limit < texts * 12 + 100_000
    assert ServeConfig(max_body_bytes=10).body_limit == 10
    assert config.public()["max_body_bytes"] == config.body_limit
    with pytest.raises(ConfigError, match="max_body_bytes=0"):
        ServeConfig(max_body_bytes=0)
    with pytest.raises(ConfigError, match="header_timeout_s=0"):
        ServeConfig(header_timeout_s=0)


def test_queue_capacity_is_the_work_drainable_within_the_target():
    # 1 ms per input at k=1 and 2 ms at k=2, whatever the length: 1000 and 500 inputs/s
    points = tuple((k, b, n, 1e-3 * k * b) for k in (1, 2) for b in (1, 64) for n in (1, 128))
    cost = CostModel(points=points)
    assert derived_queue_capacity(cost, k=1, batch=64, length=16, seconds=0.08) == 80
    assert derived_queue_capacity(cost, k=2, batch=64, length=16, seconds=0.08) == 40
    assert derived_queue_capacity(cost, k=2, batch=8, length=16, seconds=1.0) == 500
    assert derived_queue_capacity(cost, k=2, batch=64, length=16, seconds=0.001) == 1
    # a fixed 10 ms per batch: small batches cost more per input than full ones
    fixed = CostModel(points=tuple((1, b, n, 0.01 + 1e-3 * b) for b in (1, 64) for n in (1, 128)))
    # one batch of 64 takes 74 ms; 6 ms left is no batch at all
    assert derived_queue_capacity(fixed, k=1, batch=64, length=16, seconds=0.08) == 64
    # 30 ms: no full batch; the largest that fits is 20 inputs (10 + 20 ms)
    assert derived_queue_capacity(fixed, k=1, batch=64, length=16, seconds=0.03) == 20
    # never below what one request may bring: such a request would be refused forever
    assert derived_queue_capacity(cost, k=2, batch=64, length=16, seconds=0.01, floor=32) == 32


def test_fd_limit_warning_names_the_fix():
    assert fd_limit_warning(512, 0, soft_limit=4096) is None
    warning = fd_limit_warning(1000, 2, soft_limit=1024)
    assert warning is not None and "1024" in warning and "ulimit -n 1072" in warning
    assert "--max-connections" in warning


def test_throttle_lets_one_accept_error_through_per_interval():
    throttle = Throttle(("socket.accept() out of system resource",), interval_s=60)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, (), None)

    passed = [
        throttle.filter(record("socket.accept() out of system resource\n...")) for _ in range(50)
    ]
    assert passed.count(True) == 1
    assert throttle.filter(record("something else")) is True
    throttle.interval_s = 0
    again = record("socket.accept() out of system resource")
    assert throttle.filter(again) and "49 more like it" in again.getMessage()
