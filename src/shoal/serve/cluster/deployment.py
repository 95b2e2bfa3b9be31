"""The Ray Serve application: ``Cohort`` replicas, each the whole single-host server (engine,
length-aware buffer, pruning policy, runtime and the same FastAPI app, routes, key and
headers), and one ``Coordinator`` that merges their metrics into one scrape and tells them
to drain. Ray's router spreads requests over the replicas; each replica's pruning absorbs a
burst before autoscaling can react.

Imported only when Ray is asked for (``shoal serve --ray`` or ``serve deploy`` of a config
file naming ``app_builder``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from shoal.errors import ConfigError, ModelError
from shoal.serve.cluster.config import COORDINATOR, INGRESS, RayConfig
from shoal.serve.cluster.metrics import ReplicaReport, merge_expositions

log = logging.getLogger("shoal.serve.cluster")

REPORT_EVERY_S = 1.0
"""How often each replica sends its metrics and load to the coordinator."""
STALE_AFTER_S = 10.0
"""A replica silent this long (stopped, or its node gone) leaves the merged metrics."""
FAILING_AFTER = 3
"""Batches failing in a row after which Ray's health check fails and the replica is replaced."""


@serve.deployment(
    name=COORDINATOR,
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)
class Coordinator:
    """Holds each replica's last report: the merged ``/metrics`` and the drain flag."""

    def __init__(self) -> None:
        self._reports: dict[str, ReplicaReport] = {}
        self._draining = False
        self._merged: tuple[frozenset[tuple[str, float]], bytes] | None = None

    def report(self, replica: str, node: str, exposition: bytes, busy: int, draining: bool) -> bool:
        """Store one replica's report; answers whether the application is draining."""
        self._reports[replica] = ReplicaReport(node, exposition, busy, draining, time.monotonic())
        return self._draining

    def _live(self, max_age_s: float = STALE_AFTER_S) -> dict[str, ReplicaReport]:
        now = time.monotonic()
        return {r: v for r, v in self._reports.items() if now - v.at < max_age_s}

    def metrics(self) -> bytes:
        """Every live replica's last exposition, merged once per new set of reports (scrapes
        between reports reuse it)."""
        live = self._live()
        key = frozenset((r, v.at) for r, v in live.items())
        if self._merged is None or self._merged[0] != key:
            text = merge_expositions({r: (v.node, v.exposition) for r, v in live.items()})
            self._merged = (key, text)
        return self._merged[1]

    def drain(self) -> None:
        """From now on every replica stops accepting (503) and answers what it accepted."""
        self._draining = True

    def status(self, max_age_s: float = STALE_AFTER_S) -> dict[str, dict[str, Any]]:
        """Replicas that reported within ``max_age_s``: node, busy inputs, draining, seconds
        since their last report."""
        now = time.monotonic()
        return {
            r: {"node": v.node, "busy": v.busy, "draining": v.draining, "age_s": now - v.at}
            for r, v in self._live(max_age_s).items()
        }


@serve.deployment(name=INGRESS)
@serve.ingress()
class Cohort:
    """One replica: the single-host app built from the same flags, reporting to the
    coordinator."""

    async def __init__(
        self, cohort_dir: str, serve_options: dict[str, Any], coordinator: DeploymentHandle
    ) -> None:
        import os

        from shoal.serve.api.app import AppHooks
        from shoal.serve.server import ServeConfig, build_app, resolve_api_key

        self._replica = serve.get_replica_context().replica_id.unique_id
        self._node = ray.get_runtime_context().get_node_id()
        if not Path(cohort_dir, "config.json").is_file():
            raise ModelError(
                f"the cohort {cohort_dir} is not on node {self._node}; put it on storage "
                "that every node mounts at the same path"
            )
        config = resolve_api_key(ServeConfig(**serve_options), os.environ)
        self._coordinator = coordinator
        self._drain_timeout_s = config.drain_timeout_s
        self._app = build_app(
            cohort_dir,
            config,
            hooks=AppHooks(metrics_view=self._cluster_metrics, request_id_header=False),
        )
        self._engine = self._app.state.engine
        self._draining: asyncio.Task[bool] | None = None
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    def __serve_build_asgi_app__(self) -> Any:
        return self._app

    def check_health(self) -> None:
        """Ray's periodic health check: a replica whose batches keep failing, or whose engine
        stopped without being asked to drain, is replaced."""
        if self._draining is None and not self._engine.running:
            raise RuntimeError("the engine loop stopped; see the replica's log")
        if self._engine.batch_failures >= FAILING_AFTER:
            raise RuntimeError(
                f"the last {self._engine.batch_failures} batches failed; see the replica's log"
            )

    async def _report(self, exposition: bytes) -> bool:
        busy = self._engine.queue_depth + self._engine.inflight
        return bool(
            await self._coordinator.report.remote(
                self._replica, self._node, exposition, busy, self._draining is not None
            )
        )

    async def _report_loop(self) -> None:
        metrics = self._app.state.metrics
        while True:
            try:
                if await self._report(metrics.render()) and self._draining is None:
                    log.info("draining: new requests get 503; answering the accepted ones")
                    self._draining = asyncio.ensure_future(
                        self._engine.drain(self._drain_timeout_s)
                    )
            except Exception as e:  # the coordinator restarting, or its node gone
                log.warning("cannot reach the coordinator (%s); retrying", type(e).__name__)
            await asyncio.sleep(REPORT_EVERY_S)

    async def _cluster_metrics(self, local: bytes) -> bytes:
        """``/metrics``: every live replica's metrics as last reported (at most
        ``REPORT_EVERY_S`` old); this replica's alone if the coordinator cannot be reached."""
        try:
            return bytes(await self._coordinator.metrics.remote())
        except Exception as e:
            log.warning("merged metrics unavailable (%s); answering this replica's", e)
            return merge_expositions({self._replica: (self._node, local)})

    async def __del__(self) -> None:
        reporter = getattr(self, "_reporter", None)  # None: the constructor raised first
        if reporter is None:
            return
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reporter


def build_application(
    cohort_dir: str, serve_options: dict[str, Any], config: RayConfig, drain_timeout_s: float
) -> Application:
    """The bound application ``serve.run`` takes, placed as ``config`` says."""
    level = str(serve_options.get("log_level", "info")).upper()
    with warnings.catch_warnings():  # Serve warns that metrics_interval_s will become a variable
        warnings.filterwarnings("ignore", ".*metrics_interval_s", DeprecationWarning)
        cohort = Cohort.options(**config.ingress_options(drain_timeout_s, level))
    return cohort.bind(
        cohort_dir,
        serve_options,
        Coordinator.options(logging_config={"log_level": level, "enable_access_log": False}).bind(),
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for a Serve config file (``import_path:
    shoal.serve.cluster.deployment:app_builder``); replicas and placement come from the
    file's ``deployments`` section.

    Args:
        args: ``{"cohort": FOLDER, "serve": {ServeConfig field: value}}``.
    """
    unknown = sorted(set(args) - {"cohort", "serve"})
    if "cohort" not in args or unknown:
        raise ConfigError(
            f"the application args need 'cohort' (a folder) and optionally 'serve' (shoal "
            f"serve options); got {sorted(args)}"
        )
    options = dict(args.get("serve") or {})
    from shoal.serve.server import ServeConfig

    try:
        ServeConfig(**options)  # refuse bad options here, not in every replica
    except TypeError as e:
        raise ConfigError(f"bad 'serve' options in the application args: {e}") from None
    return Cohort.bind(str(args["cohort"]), options, Coordinator.bind())
