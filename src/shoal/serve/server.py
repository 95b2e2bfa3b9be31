"""Start-up: ``ServeConfig`` -> runtime, scheduler, engine and app -> uvicorn, with a graceful
drain on SIGTERM / Ctrl-C (stop accepting, answer every accepted request, then exit).

    python -m shoal.serve.server runs/cohort --port 8000 --latency-target-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shoal.errors import ConfigError, ModelError, ShoalError
from shoal.types import token_limit

log = logging.getLogger("shoal.serve")


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
    max_client_batch_size pairs of max_input_chars characters at 2 bytes each, plus 64 KiB of
    JSON (2.5 MiB with the defaults)."""
    max_connections: int = 512
    """Most open client connections: a new one at the cap closes the longest-idle connection,
    and a request arriving with the cap reached (or that many requests in flight) gets 503."""
    header_timeout_s: float = 10.0
    """Seconds a connection may take to send a complete request head, from connecting or from
    its previous response; then it is closed."""
    keep_alive_s: float = 5.0
    """Seconds an idle keep-alive connection stays open after a response."""
    max_header_bytes: int = 16_384
    """Most bytes of request line plus headers (400 above)."""
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
    cohort can answer within the latency target at its profiled capacity,
    ``floor(latency_target * headroom * throughput)``, where throughput is inputs per second in
    batches of max_batch_size at half of max_length with the fewest students pruning may use
    (all of them with --no-pruning); at least max_batch_size."""
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
        timeouts = ("header_timeout_s", "keep_alive_s")
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
        return self.max_client_batch_size * 2 * self.max_input_chars * 2 + 65_536

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


# ------------------------------------------------------------------------------ wiring


def read_cohort(cohort_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and ``shoal_meta.json`` of a cohort folder (no weights loaded)."""
    from shoal.models.cohort import CONFIG_NAME, META_NAME, MODEL_TYPE

    path = Path(cohort_dir)
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(
            f"{path} is not a Shoal cohort ({e}); create one with `shoal distill`"
        ) from None
    if config.get("model_type") != MODEL_TYPE:
        raise ModelError(
            f"{path} holds a {config.get('model_type')!r} model, not a Shoal "
            "cohort; distil it first with `shoal distill`"
        )
    meta_path = path / META_NAME
    if not meta_path.is_file():
        return config, {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(
            f"{meta_path} is not valid JSON ({e}); restore it from the `shoal distill` "
            "output, or delete it to serve without stored accuracy"
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(
            f"{meta_path} holds a {type(meta).__name__}, not a JSON object; restore it"
        )
    return config, meta


def label_names(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    n = int(config.get("num_labels", 2))
    names = meta.get("label_names")
    if names and len(names) == n:
        return [str(x) for x in names]
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(n)]


def prefix_accuracy(meta: dict[str, Any], n_students: int, split: str) -> tuple[float, ...]:
    """Stored accuracy of each prefix k = 1..N on ``split``; () if any is missing."""
    rows = {
        int(r["k"]): r.get(f"{split}_accuracy")
        for r in meta.get("prefix_accuracy", [])
        if isinstance(r, dict) and "k" in r
    }
    values = [rows.get(k) for k in range(1, n_students + 1)]
    if any(v is None for v in values):
        return ()
    return tuple(float(v) for v in values)  # type: ignore[arg-type]


def policy_config(config: ServeConfig, n_students: int, meta: dict[str, Any]) -> Any:
    """``PolicyConfig`` from the flags and the cohort's stored prefix accuracy."""
    from shoal.serve.policy import PolicyConfig

    acc = prefix_accuracy(meta, n_students, config.accuracy_split)
    if config.max_accuracy_drop is not None and not acc:
        raise ConfigError(
            f"max_accuracy_drop={config.max_accuracy_drop} needs the cohort's "
            f"{config.accuracy_split} accuracy for every prefix, which shoal_meta.json lacks; "
            "use --floor-k instead or re-run `shoal distill` with dev data"
        )
    if config.floor_k > n_students:
        raise ConfigError(f"floor_k={config.floor_k} but the cohort has {n_students} students")
    return PolicyConfig(
        n_students=n_students,
        latency_target_s=config.latency_target_ms / 1e3,
        floor_k=config.floor_k,
        max_accuracy_drop=config.max_accuracy_drop,
        prefix_accuracy=acc,
        up_hold_s=config.up_hold_s,
        headroom=config.headroom,
        enabled=config.pruning,
    )


def start_runtime(cohort_dir: str | Path, config: ServeConfig) -> Any:
    """The inference runtime (students on the device, cost model profiled or cached)."""
    from shoal.serve.runtime import Runtime, RuntimeConfig

    rc = RuntimeConfig(
        device=config.device,
        workers=config.workers,
        threads=config.threads,
        dtype=config.dtype,
        backend=config.backend,
    )
    try:
        return Runtime.start(
            cohort_dir, rc, cache_dir=config.profile_cache, refresh_profile=config.refresh_profile
        )
    except ShoalError:
        raise
    except Exception as e:  # safetensors / torch errors on a damaged weights file
        weights = Path(cohort_dir) / "model.safetensors"
        raise ModelError(
            f"cannot load the cohort's weights {weights} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else e!r}); the file is missing or damaged: "
            "copy it again or re-run `shoal distill`"
        ) from None


def load_tokenizer(cohort_dir: str | Path) -> Any:
    """The tokenizer saved with the cohort, never running code the folder ships
    (``trust_remote_code=False``: an ``auto_map`` in its config is refused, not imported).
    transformers does not know the cohort's ``model_type`` and warns about it on every load;
    the warning is noise here."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        return AutoTokenizer.from_pretrained(str(cohort_dir), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{cohort_dir} has no usable tokenizer ({e}); save one with the "
            "cohort (ShoalModel.save_pretrained(folder, tokenizer))"
        ) from None
    finally:
        hf_logging.set_verbosity(level)


def build_app(
    cohort_dir: str | Path, config: ServeConfig, runner: Any = None, hooks: Any = None
) -> Any:
    """The FastAPI app serving the cohort; ``runner`` defaults to a started ``Runtime``;
    ``hooks`` (``AppHooks``) for an app behind another proxy.

    The app's shutdown stops the engine and closes the runner.
    """
    from shoal.serve.api import ApiLimits, ServiceInfo, create_app
    from shoal.serve.buffer import BufferConfig
    from shoal.serve.engine import Engine, TextEncoder
    from shoal.serve.scheduler import Scheduler, SchedulerConfig

    model_cfg, meta = read_cohort(cohort_dir)
    n = int(model_cfg["n_students"])
    positions = token_limit(model_cfg)
    max_length = config.max_length or int(meta.get("max_length") or min(positions, 512))
    if max_length > positions:
        raise ConfigError(
            f"max_length={max_length} exceeds the cohort's {positions} positions; "
            f"use --max-length {positions} or less"
        )
    policy = policy_config(config, n, meta)
    tokenizer = load_tokenizer(cohort_dir)
    if runner is None:
        runner = start_runtime(cohort_dir, config)
    if runner.cost_model is None:
        runner.close()
        raise ConfigError("the runtime has no cost model; start it with profiling on")
    capacity = config.queue_capacity or derived_queue_capacity(
        runner.cost_model,
        k=policy.effective_floor if config.pruning else n,
        batch=config.max_batch_size,
        length=max(1, max_length // 2),
        seconds=config.latency_target_ms / 1e3 * config.headroom,
    )
    scheduler_config = SchedulerConfig(
        policy=policy,
        buffer_kind=config.buffer,
        buffer=BufferConfig(
            bin_width=config.bin_width,
            max_element_tokens=config.max_batch_tokens,
            max_element_size=config.max_batch_size,
            capacity=capacity,
            max_wait_s=config.max_wait_ms / 1e3,
        ),
        calibrate=config.calibrate,
    )
    encoder = TextEncoder(
        tokenizer, max_length, truncate=config.truncate, max_chars=config.max_input_chars
    )
    engine = Engine(
        runner,
        Scheduler(scheduler_config, runner.cost_model),
        pad_id=encoder.pad_id,
        default_deadline_s=None if config.deadline_ms is None else config.deadline_ms / 1e3,
    )
    info = ServiceInfo(
        model_id=Path(cohort_dir).name or str(cohort_dir),
        labels=label_names(model_cfg, meta),
        n_students=n,
        student_layers=int(model_cfg.get("student_layers", 2)),
        prefix_accuracy=list(meta.get("prefix_accuracy", [])),
        config={
            **config.public(),
            "max_length": max_length,
            "effective_floor_k": policy.effective_floor,
            "queue_capacity": capacity,
        },
    )
    limits = ApiLimits(
        max_client_batch_size=config.max_client_batch_size,
        api_key=config.api_key,
        max_body_bytes=config.body_limit,
        retry_after_s=config.retry_after_s,
    )
    app = create_app(engine, encoder, info, limits, on_close=runner.close, hooks=hooks)
    app.state.engine = engine
    return app


def derived_queue_capacity(
    cost_model: Any, *, k: int, batch: int, length: int, seconds: float
) -> int:
    """Inputs the runtime answers in ``seconds`` running ``batch``-input batches of ``length``
    tokens with ``k`` students back to back (as the cost model predicts); at least ``batch``."""
    rate = cost_model.throughput(k, length, batch)
    if not math.isfinite(rate):
        return max(batch, 1024)
    return max(batch, math.floor(rate * seconds))


# ------------------------------------------------------------------------------ running


def _uvicorn_server(app: Any, config: ServeConfig) -> Any:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On the first SIGTERM/SIGINT: stop accepting (503), answer every accepted request,
        then shut down. A second signal falls back to uvicorn's immediate exit."""

        _draining = False

        async def serve(self, sockets: Any = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
            if self._draining or not hasattr(self, "_loop"):
                super().handle_exit(sig, frame)
                return
            self._draining = True
            log.info("received %s: draining (new requests get 503)", signal.Signals(sig).name)
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

        async def _drain(self) -> None:
            engine = app.state.engine
            ok = await engine.drain(config.drain_timeout_s)
            log.info(
                "drained %s; shutting down",
                "every request" if ok else f"until the {config.drain_timeout_s} s timeout",
            )
            self.should_exit = True

    from shoal.serve.connections import guarded_protocol

    return DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(config.drain_timeout_s),
            http=guarded_protocol(config.header_timeout_s, config.max_connections),
            limit_concurrency=config.max_connections,
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
            h11_max_incomplete_event_size=config.max_header_bytes,
        )
    )


def serve_command(cohort_dir: str | Path, **options: Any) -> None:
    """Serve a cohort over HTTP until SIGTERM/Ctrl-C (``shoal serve COHORT_DIR --flags``).

    Args:
        options: ``ServeConfig`` fields.
    Raises:
        ConfigError / ModelError: bad options or cohort, with the fix in the message.
    """
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown serve options {unknown}; known: {sorted(fields)}")
    config = resolve_api_key(ServeConfig(**options), os.environ)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from shoal.serve.connections import fd_limit_warning, throttle_connection_logs

    throttle_connection_logs()
    log.info("serving %s with %s", cohort_dir, json.dumps(config.public()))
    warning = fd_limit_warning(config.max_connections, config.workers)
    if warning:
        log.warning(warning)
    app = build_app(cohort_dir, config)
    _uvicorn_server(app, config).run()


def field_docs(cls: type = ServeConfig) -> dict[str, str]:
    """Each field's docstring of a config dataclass (for ``--help`` texts), read from the
    source."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
        ):
            docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs


def _add_flags(p: argparse._ActionsContainer, cls: type) -> None:
    """One flag per field of a config dataclass (``--latency-target-ms``; ``--no-pruning``)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = type(None) in typing.get_args(kind)
        base = args[0] if optional else kind
        doc = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=doc)
        elif typing.get_origin(base) is Literal:
            p.add_argument(flag, choices=typing.get_args(base), default=f.default, help=doc)
        else:

            def convert(text: str, base: Any = base, optional: bool = optional) -> Any:
                if optional and text.lower() in ("none", "null", ""):
                    return None
                return base(text)

            p.add_argument(flag, type=convert, default=f.default, help=doc)


def _parser() -> argparse.ArgumentParser:
    """The single-host flags, then the Ray Serve ones (used with --ray)."""
    from shoal.serve.cluster.config import RayConfig

    p = argparse.ArgumentParser(
        prog="python -m shoal.serve.server", description="Serve a Shoal cohort over HTTP."
    )
    p.add_argument("cohort_dir", help="Folder written by `shoal distill`.")
    _add_flags(p, ServeConfig)
    _add_flags(
        p.add_argument_group(
            "Ray Serve",
            "Replicas of the whole server across a Ray cluster (pip install shoal[ray]).",
        ),
        RayConfig,
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from shoal.serve.cluster.config import RayConfig

    args = vars(_parser().parse_args(argv))
    cohort = args.pop("cohort_dir")
    ray_fields = {f.name for f in dataclasses.fields(RayConfig)}
    ray_args = {k: args.pop(k) for k in list(args) if k in ray_fields}
    try:
        ray_config = RayConfig(**ray_args)
        if not (ray_config.ray or ray_config.ray_config_out):
            changed = [
                "--" + k.replace("_", "-")
                for k, v in ray_args.items()
                if v != getattr(RayConfig(), k)
            ]
            if changed:
                raise ConfigError(f"{', '.join(changed)} only apply with --ray; add --ray")
            serve_command(cohort, **args)
        else:
            ray_command(cohort, ray_config, **args)
    except ShoalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def ray_command(cohort_dir: str, ray_config: Any, **options: Any) -> None:
    """``shoal serve COHORT --ray``: the same server as a Ray Serve application, or (with
    --ray-config-out) the Serve config file that deploys it."""
    config = ServeConfig(**options)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    read_cohort(cohort_dir)
    from shoal.serve.cluster import launch

    try:
        launch.prepare_environment(ray_config)
        import ray.serve  # noqa: F401
    except (ImportError, FileNotFoundError) as e:
        raise ConfigError(
            f"--ray needs Ray Serve ({e}); install it with pip install -e '.[ray]'"
        ) from None
    if ray_config.ray_config_out:
        out = launch.write_serve_config(cohort_dir, config, ray_config)
        print(f"wrote {out}; deploy it with: serve deploy {out}")
        return
    config = resolve_api_key(config, os.environ)
    launch.serve_on_ray(cohort_dir, config, ray_config)


if __name__ == "__main__":
    sys.exit(main())
