"""``ServeConfig``: everything ``shoal serve`` takes, one field per ``--flag``, validated, and
where the API key comes from. Plain data: no torch, no server."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shoal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything ``shoal serve`` takes; each field is one ``--flag``."""

    # -- network
    host: str = "127.0.0.1"
    """Address to bind; loopback by default (put a proxy in front to expose it)."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """If set, clients must send ``Authorization: Bearer <key>`` on every route but /health and
    /ping (/docs, /redoc and /openapi.json included). A key given here shows in ``ps``; prefer
    --api-key-file or the SHOAL_API_KEY environment variable."""
    api_key_file: str | None = None
    """File holding the API key (surrounding whitespace ignored); instead of --api-key."""
    max_body_bytes: int | None = None
    """Most bytes of request body, declared or streamed (413 above). None: room for
    max_client_batch_size pairs of max_input_chars characters at 12 bytes each (a character
    outside the BMP as the \\uXXXX\\uXXXX escape pair that json.dumps and requests send by
    default), plus 64 KiB of JSON (14.7 MiB with the defaults)."""
    max_connections: int = 512
    """Most open client connections: a new one at the cap closes the connection that has waited
    longest on its client without progress (an idle socket, or an upload whose last body bytes
    are oldest), and a request arriving at the cap with none stalled gets 503."""
    header_timeout_s: float = 10.0
    """Seconds a connection may take to send a complete request head, from connecting or from
    its previous response; then it is closed."""
    body_timeout_s: float = 10.0
    """Seconds a request may take to send its body once its head is in; then it gets 408 and
    the connection is closed."""
    keep_alive_s: float = 5.0
    """Seconds an idle keep-alive connection stays open after a response."""
    max_header_bytes: int = 16_384
    """Most bytes of request line plus headers (431 above, and the connection is closed)."""
    log_level: str = "info"
    """Python logging level: debug, info, warning, error."""
    # -- pruning policy
    latency_target_ms: float = 100.0
    """Latency objective per request; pruning keeps the queue drainable within it."""
    pruning: bool = True
    """Adapt the number of students to the load; off: always all students."""
    floor_k: int = 1
    """Fewest students ever used."""
    max_accuracy_drop: float | None = None
    """Accuracy points (0-100) pruning may cost against the full cohort, read from the
    cohort's stored per-prefix accuracy; combined with floor_k by max."""
    accuracy_split: Literal["dev", "test"] = "dev"
    """Which stored per-prefix accuracy the accuracy floor reads."""
    up_hold_s: float = 1.0
    """Hysteresis: seconds the load must allow more students before k rises."""
    headroom: float = 0.8
    """Fraction of the latency target the queued work may take to drain."""
    calibrate: bool = True
    """Scale the start-up cost profile by how much slower than profiled recent batches ran
    (other load on the cores, overheads the profile missed); off: trust the profile."""
    # -- buffer
    buffer: Literal["length_aware", "fifo"] = "length_aware"
    """The paper's length-aware tail-merge buffer, or plain FIFO dynamic batching."""
    bin_width: int = 16
    """Tokens per length bin of the length-aware buffer."""
    max_batch_tokens: int = 4096
    """Most padded tokens (batch x longest input) in one batch."""
    max_batch_size: int = 64
    """Most inputs in one batch."""
    queue_capacity: int | None = None
    """Most inputs waiting; beyond it requests get 429 with Retry-After. None: what the
    cohort answers within half of latency_target * headroom at its profiled speed (the last
    input admitted waits for the running batch, then for the queue), in batches of up to
    max_batch_size at half of max_length with the fewest students pruning may use (all of them
    with --no-pruning); at least 1, and smaller while batches run slower than profiled (the
    calibration). A request is queued whole or refused: one with more inputs than the capacity
    is queued only into an empty queue."""
    max_wait_ms: float = 0.0
    """FIFO only: how long the oldest input may wait for a fuller batch."""
    # -- requests
    max_length: int | None = None
    """Token limit per input; None: the length the cohort was distilled with."""
    truncate: bool = True
    """Truncate over-long inputs (clients may override per request); off: refuse with 413."""
    max_input_chars: int = 20_000
    """Characters per text above which it is refused (413) before tokenising."""
    max_client_batch_size: int = 32
    """Most inputs in one request (413 above)."""
    deadline_ms: float | None = 10_000.0
    """Default deadline per request; a request not started by then gets 408. None: none."""
    drain_timeout_s: float = 30.0
    """On SIGTERM, how long to wait for accepted requests before failing them with 503."""
    retry_after_s: int = 1
    """``Retry-After`` seconds sent with 429 and 503."""
    # -- runtime
    device: str = "cpu"
    """'cpu', 'cuda' or 'cuda:N'."""
    workers: int = 0
    """Worker processes holding the students; 0 runs the cohort fused in the server."""
    threads: int | None = None
    """Intra-op threads (per worker); None: the runtime's default."""
    dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    """Precision of the students' matmuls; 'int8' (dynamic quantization) needs
    backend='onnxruntime'."""
    backend: Literal["torch", "onnxruntime"] = "torch"
    """What runs the students: 'torch' (fused eager path) or 'onnxruntime' (CPU, float32 or
    int8; prepacked weights, faster at small batches)."""
    profile_cache: str | None = None
    """Folder of cached cost profiles; None: the runtime's default (~/.cache/shoal/profiles)."""
    refresh_profile: bool = False
    """Measure the cost model again even if a cached one exists."""

    def __post_init__(self) -> None:
        positive = (
            "port",
            "floor_k",
            "bin_width",
            "max_batch_tokens",
            "max_batch_size",
            "queue_capacity",
            "max_input_chars",
            "max_client_batch_size",
            "retry_after_s",
            "max_body_bytes",
            "max_connections",
            "max_header_bytes",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be at least 1")
        timeouts = ("header_timeout_s", "body_timeout_s", "keep_alive_s")
        for name in ("latency_target_ms", "drain_timeout_s", "headroom", *timeouts):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.max_wait_ms < 0 or self.up_hold_s < 0:
            raise ConfigError(
                f"max_wait_ms={self.max_wait_ms} and up_hold_s={self.up_hold_s} must be >= 0"
            )
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ConfigError(f"deadline_ms={self.deadline_ms} must be > 0, or None for none")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length} must be at least 2 ([CLS] [SEP])")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty; give a non-empty key or leave it out")

    @property
    def body_limit(self) -> int:
        """``max_body_bytes``, or its default derived from the per-request limits."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        # the largest valid request as json.dumps sends it (ensure_ascii): a pair per input,
        # each text of max_input_chars characters outside the BMP at 12 bytes ("\ud83d\ude00")
        return self.max_client_batch_size * 2 * self.max_input_chars * 12 + 65_536

    def public(self) -> dict[str, Any]:
        """The resolved config as JSON data, with the API key hidden."""
        out = dataclasses.asdict(self)
        out["api_key"] = None if self.api_key is None else "***"
        out["max_body_bytes"] = self.body_limit
        return out


API_KEY_ENV = "SHOAL_API_KEY"


def resolve_api_key(config: ServeConfig, environ: typing.Mapping[str, str]) -> ServeConfig:
    """The config with ``api_key`` set from --api-key, --api-key-file or ``SHOAL_API_KEY``
    (at most one of them), and ``api_key_file`` cleared."""
    sources = [
        name
        for name, given in (
            ("--api-key", config.api_key is not None),
            ("--api-key-file", config.api_key_file is not None),
            (API_KEY_ENV, bool(environ.get(API_KEY_ENV))),
        )
        if given
    ]
    if len(sources) > 1:
        raise ConfigError(f"the API key is given by {' and '.join(sources)}; give it once")
    key = config.api_key
    if config.api_key_file is not None:
        try:
            key = Path(config.api_key_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read the API key file {config.api_key_file} ({e}); "
                "give a readable UTF-8 file holding the key"
            ) from None
        if not key:
            raise ConfigError(f"the API key file {config.api_key_file} is empty; put the key in it")
    elif environ.get(API_KEY_ENV):
        key = environ[API_KEY_ENV].strip()
    return dataclasses.replace(config, api_key=key, api_key_file=None)
