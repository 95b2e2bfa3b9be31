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
from pathlib import Path
from typing import Any, Literal

from shoal import problems
from shoal.errors import ConfigError, ModelError, ShoalError
from shoal.flags import field_docs
from shoal.models.cohort_folder import label_names, load_tokenizer, prefix_accuracy, read_cohort
from shoal.serve.config import API_KEY_ENV, ServeConfig, resolve_api_key
from shoal.types import token_limit

log = logging.getLogger("shoal.serve")

__all__ = ["API_KEY_ENV", "ServeConfig", "build_app", "main", "resolve_api_key", "serve_command"]


# ------------------------------------------------------------------------------ wiring


def policy_config(
    config: ServeConfig, n_students: int, meta: dict[str, Any], metric: str = "accuracy"
) -> Any:
    """``PolicyConfig`` from the flags and the cohort's stored score per prefix, in the task's
    ``metric`` (accuracy; micro-F1 for multi-label heads, Pearson's r for regression)."""
    from shoal.serve.policy import PolicyConfig

    acc = prefix_accuracy(meta, n_students, config.accuracy_split, metric)
    if config.max_accuracy_drop is not None and not acc:
        raise ConfigError(
            f"max_accuracy_drop={config.max_accuracy_drop} needs the cohort's "
            f"{config.accuracy_split} {metric} for every prefix, which shoal_meta.json lacks; "
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


def start_runtime(cohort_dir: str | Path, config: ServeConfig, check: Any = None) -> Any:
    """The inference runtime (students on the device, cost model profiled or cached);
    ``check(runtime)`` runs once it is loaded, before profiling (the model self-check)."""
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
            cohort_dir,
            rc,
            cache_dir=config.profile_cache,
            refresh_profile=config.refresh_profile,
            check=check,
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


def build_app(
    cohort_dir: str | Path, config: ServeConfig, runner: Any = None, hooks: Any = None
) -> Any:
    """The FastAPI app serving the cohort; ``runner`` defaults to a started ``Runtime``;
    ``hooks`` (``AppHooks``) for an app behind another proxy.

    Before it serves, the runner passes the model self-check (``runtime.selfcheck``: a probe
    through every prefix k; ``SelfCheckFailed`` otherwise); the engine reruns it while failing.
    The app's shutdown stops the engine and closes the runner.
    """
    from shoal.serve.api import ApiLimits, ServiceInfo, create_app
    from shoal.serve.encoder import TextEncoder
    from shoal.serve.engine import Engine
    from shoal.serve.runtime.selfcheck import probe_batches, self_check
    from shoal.serve.scheduler import Scheduler

    model_cfg, meta = read_cohort(cohort_dir)
    n = int(model_cfg["n_students"])
    max_length = served_max_length(config, model_cfg, meta)
    problem_type = model_cfg["problem_type"]
    policy = policy_config(config, n, meta, problems.PRIMARY[problem_type])
    tokenizer = load_tokenizer(cohort_dir)
    encoder = TextEncoder(
        tokenizer, max_length, truncate=config.truncate, max_chars=config.max_input_chars
    )
    labels = label_names(model_cfg, meta)
    probe = probe_batches(encoder, n)

    def check(rt: Any) -> None:
        self_check(rt, probe, len(labels), cohort_dir)

    if runner is None:
        runner = start_runtime(cohort_dir, config, check)
    else:
        try:
            check(runner)
        except BaseException:
            runner.close()
            raise
    if runner.cost_model is None:
        runner.close()
        raise ConfigError("the runtime has no cost model; start it with profiling on")
    capacity = config.queue_capacity or derived_queue_capacity(
        runner.cost_model,
        k=policy.effective_floor if config.pruning else n,
        batch=config.max_batch_size,
        length=max(1, max_length // 2),
        # an input admitted last waits for the batch running when it came, then for the
        # queue ahead of it: each may take half of the target's share
        seconds=config.latency_target_ms / 1e3 * config.headroom / 2,
    )
    engine = Engine(
        runner,
        Scheduler(scheduler_config(config, policy, capacity), runner.cost_model),
        pad_id=encoder.pad_id,
        default_deadline_s=None if config.deadline_ms is None else config.deadline_ms / 1e3,
        self_check=lambda: check(runner),
        score_function=problems.FUNCTIONS[problem_type],
    )
    info = ServiceInfo(
        model_id=Path(cohort_dir).name or str(cohort_dir),
        labels=labels,
        problem_type=problem_type,
        thresholds=model_cfg.get("thresholds"),
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
    return create_app(engine, encoder, info, limits, on_close=runner.close, hooks=hooks)


def served_max_length(config: ServeConfig, model_cfg: dict[str, Any], meta: dict[str, Any]) -> int:
    """Tokens kept per input: ``--max-length``, else the length the cohort was trained at
    (at most 512), never beyond its position table."""
    positions = token_limit(model_cfg)
    max_length = config.max_length or int(meta.get("max_length") or min(positions, 512))
    if max_length > positions:
        raise ConfigError(
            f"max_length={max_length} exceeds the cohort's {positions} positions; "
            f"use --max-length {positions} or less"
        )
    return max_length


def scheduler_config(config: ServeConfig, policy: Any, capacity: int) -> Any:
    """``SchedulerConfig`` from the flags, the policy and the buffer's capacity."""
    from shoal.serve.buffer import BufferConfig
    from shoal.serve.scheduler import SchedulerConfig

    return SchedulerConfig(
        policy=policy,
        buffer_kind=config.buffer,
        buffer=BufferConfig(
            bin_width=config.bin_width,
            max_batch_tokens=config.max_batch_tokens,
            max_batch_size=config.max_batch_size,
            capacity=capacity,
            max_wait_s=config.max_wait_ms / 1e3,
        ),
        calibrate=config.calibrate,
        capacity_follows_speed=config.queue_capacity is None,
    )


def derived_queue_capacity(
    cost_model: Any, *, k: int, batch: int, length: int, seconds: float, floor: int = 1
) -> int:
    """Most inputs the runtime answers within ``seconds`` (as the cost model predicts): as many
    full ``batch``-input batches of ``length`` tokens with ``k`` students as fit back to back,
    then the largest smaller batch that fits in the time left; at least ``floor``."""
    full = cost_model.cost(k, batch, length)
    if not (math.isfinite(full) and full > 0):
        return max(floor, 1024)
    slack = 1e-9  # the cost model's interpolation rounds
    n_full = math.floor((seconds + slack) / full)
    left = seconds - n_full * full + slack
    rest = max((b for b in range(1, batch) if cost_model.cost(k, b, length) <= left), default=0)
    return max(floor, n_full * batch + rest)


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
            app.state.engine.accepting = False  # before the loop reads another request
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

    from shoal.serve.connections import CLOSE_REASONS, ConnectionLimits, guarded_protocol

    limits = ConnectionLimits(
        header_timeout_s=config.header_timeout_s,
        body_timeout_s=config.body_timeout_s,
        max_connections=config.max_connections,
        max_header_bytes=config.max_header_bytes,
        retry_after_s=config.retry_after_s,
    )
    # the protocol applies the connection cap and the head-size limit itself (counted in
    # shoal_connections_closed_total), so uvicorn's limit_concurrency stays unset
    protocol = guarded_protocol(
        limits, on_close=app.state.metrics.connection_counter(CLOSE_REASONS)
    )
    return DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(config.drain_timeout_s),
            http=protocol,
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
        )
    )


def serve_command(cohort_dir: str | Path, **options: Any) -> None:
    """Serve a cohort over HTTP until SIGTERM/Ctrl-C (``shoal serve COHORT_DIR --flags``);
    a fine-tuned Hugging Face classifier folder is served whole (``models.whole_teacher``).

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
    from shoal.models.whole_teacher import served_folder

    with served_folder(cohort_dir) as folder:  # a classifier folder: its one-student cohort
        app = build_app(folder, config)
        _uvicorn_server(app, config).run()


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
    p.add_argument(
        "cohort_dir",
        help="Folder written by `shoal distill`, or a fine-tuned Hugging Face classifier "
        "folder, served whole (one student of its full depth, nothing to prune).",
    )
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
    from shoal.models.whole_teacher import is_classifier

    if is_classifier(cohort_dir):
        raise ConfigError(
            f"{cohort_dir} is a Hugging Face classifier; --ray serves cohort folders. Serve "
            "it on one host (shoal serve without --ray), or distil it first (shoal distill)"
        )
    read_cohort(cohort_dir)
    from shoal.serve.cluster import launch

    try:
        launch.prepare_environment(ray_config, config.port)
        import ray.serve  # noqa: F401
    except (ImportError, FileNotFoundError) as e:
        raise ConfigError(
            f"--ray needs Ray Serve ({e}); install it with pip install -e '.[ray]'"
        ) from None
    if ray_config.ray_config_out:
        out = launch.write_serve_config(cohort_dir, config, ray_config)
        print(f"wrote {out}; deploy it with: serve deploy {out}")
        variables = " ".join(f"{k}={v}" for k, v in ray_config.environment(config.port).items())
        if variables:
            print(f"start every node of the cluster with {variables} (before `ray start`)")
        return
    config = resolve_api_key(config, os.environ)
    launch.serve_on_ray(cohort_dir, config, ray_config)


if __name__ == "__main__":
    sys.exit(main())
