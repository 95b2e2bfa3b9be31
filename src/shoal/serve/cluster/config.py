"""``RayConfig``: where and how many replicas of the cohort Ray Serve runs. Plain data, no Ray
import: the flags of ``shoal serve --ray`` map onto it, and it renders the equivalent Serve
config file for ``serve deploy``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shoal.errors import ConfigError

APP_BUILDER = "shoal.serve.cluster.deployment:app_builder"
"""Import path of the application builder a Serve config file names."""
INGRESS = "Cohort"
"""Name of the deployment whose replicas hold the whole cohort and answer HTTP."""
COORDINATOR = "Coordinator"
"""Name of the one-replica deployment that gathers metrics and carries the drain signal."""
DIRECT_PORTS = 1000
"""Ports per node that direct ingress may give replicas, from --port + 1."""


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Everything ``shoal serve --ray`` adds to the single-host flags; each field is one flag."""

    ray: bool = False
    """Serve the cohort as a Ray Serve application (replicas across the cluster's nodes)
    instead of one uvicorn process."""
    ray_address: str | None = None
    """Ray cluster to join: 'auto' (the one `ray start` runs here), 'ray://HOST:10001' or
    'HOST:6379'; None: the RAY_ADDRESS environment variable, else a local Ray started for this
    server and stopped with it."""
    app_name: str = "shoal"
    """Name of the Serve application (several cohorts can share one cluster)."""
    replicas: int = 1
    """Replicas of the cohort, each a whole cohort with its own engine (with --max-replicas:
    how many to start with)."""
    min_replicas: int | None = None
    """Autoscaling: fewest replicas (needs --max-replicas)."""
    max_replicas: int | None = None
    """Autoscaling: most replicas; set it to let Ray add replicas under sustained load."""
    target_ongoing_requests: float = 32.0
    """Autoscaling: requests in flight per replica that Ray's autoscaler aims for."""
    upscale_delay_s: float = 3.0
    """Autoscaling: seconds the load must stay above target before a replica is added."""
    downscale_delay_s: float = 60.0
    """Autoscaling: seconds the load must stay below target before a replica is removed."""
    autoscale_window_s: float = 10.0
    """Autoscaling: seconds of load averaged for each decision (Serve's look-back period)."""
    autoscale_report_s: float = 2.0
    """Autoscaling: seconds between the load reports that replicas and routers send the
    autoscaler (Serve's metrics_interval_s, 10 s by default there); below the window, so each
    decision averages several reports."""
    cpus_per_replica: float = 1.0
    """CPUs Ray reserves for each replica (set --threads to match)."""
    gpus_per_replica: float = 0.0
    """GPUs per replica; fractions share one GPU between replicas (0.5: two per GPU). Above 0,
    the replicas run on 'cuda'."""
    max_ongoing_requests: int = 512
    """Requests one replica holds at once (queued in its length-aware buffer or running);
    more wait in Ray's router. Keep it above the engine's queue capacity so the engine's own
    429 answers overload."""
    max_queued_requests: int = 1024
    """Requests Ray's router holds per caller while every replica is at
    max_ongoing_requests; beyond it the request gets 503 (-1: unbounded)."""
    proxy: Literal["head", "every-node", "direct"] = "head"
    """Where Ray runs the HTTP proxy: on the head node only (one address), on every node (put
    a load balancer in front), or 'direct': the head's proxy, and each replica also answers
    HTTP itself on a port of its node from --port + 1 up (Serve's direct ingress, no proxy
    hop: put a load balancer over the replicas' addresses, printed at start)."""
    ray_config_out: str | None = None
    """Write the equivalent Serve config file (YAML, for `serve deploy`) here and exit."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"replicas={self.replicas} must be at least 1")
        if self.min_replicas is not None and self.max_replicas is None:
            raise ConfigError(
                f"min_replicas={self.min_replicas} needs --max-replicas (autoscaling bounds)"
            )
        if self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            if low < 0 or self.max_replicas < max(low, 1):
                raise ConfigError(
                    f"min_replicas={self.min_replicas} and max_replicas={self.max_replicas} "
                    "need 0 <= min <= max and max >= 1"
                )
        if not self.target_ongoing_requests > 0:
            raise ConfigError(f"target_ongoing_requests={self.target_ongoing_requests} must be > 0")
        if not self.autoscale_window_s > 0:
            raise ConfigError(f"autoscale_window_s={self.autoscale_window_s} must be > 0")
        if self.max_replicas is not None and not (
            0 < self.autoscale_report_s < self.autoscale_window_s
        ):
            raise ConfigError(
                f"autoscale_report_s={self.autoscale_report_s} must be > 0 and below "
                f"autoscale_window_s={self.autoscale_window_s} (the autoscaler averages "
                "several reports per decision)"
            )
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ConfigError(
                f"upscale_delay_s={self.upscale_delay_s} and "
                f"downscale_delay_s={self.downscale_delay_s} must be >= 0"
            )
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ConfigError(
                f"cpus_per_replica={self.cpus_per_replica} and "
                f"gpus_per_replica={self.gpus_per_replica} must be >= 0"
            )
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests={self.max_ongoing_requests} must be >= 1")
        if self.max_queued_requests < 1 and self.max_queued_requests != -1:
            raise ConfigError(
                f"max_queued_requests={self.max_queued_requests} must be >= 1, or -1 (unbounded)"
            )

    def environment(self, port: int) -> dict[str, str]:
        """Variables every node of the cluster needs from its start (``ray start``) for this
        placement: with --proxy direct, Serve's direct ingress on the ports from port + 1."""
        if self.proxy != "direct":
            return {}
        return {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port + 1),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1 + DIRECT_PORTS),
        }

    @property
    def proxy_location(self) -> str:
        """Serve's ``proxy_location``: direct ingress keeps the head's proxy only."""
        return "EveryNode" if self.proxy == "every-node" else "HeadOnly"

    @property
    def autoscaling(self) -> dict[str, Any] | None:
        """Serve's ``autoscaling_config``, or None for a fixed number of replicas."""
        if self.max_replicas is None:
            return None
        low = self.min_replicas if self.min_replicas is not None else 1
        return {
            "min_replicas": low,
            "initial_replicas": max(low, 1, min(self.replicas, self.max_replicas)),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.autoscale_window_s,
            "metrics_interval_s": self.autoscale_report_s,
        }

    def ingress_options(self, drain_timeout_s: float, log_level: str = "INFO") -> dict[str, Any]:
        """Options of the ``Cohort`` deployment (``Deployment.options`` keywords, which are also
        the keys of a Serve config file's ``deployments`` entry)."""
        actor: dict[str, Any] = {"num_cpus": self.cpus_per_replica}
        if self.gpus_per_replica:
            actor["num_gpus"] = self.gpus_per_replica
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": drain_timeout_s,
            "graceful_shutdown_wait_loop_s": 0.5,
            "health_check_period_s": 5.0,
            # Shoal logs one line per request itself; Ray's access log would repeat it
            "logging_config": {"log_level": log_level, "enable_access_log": False},
        }
        scaling = self.autoscaling
        if scaling is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = scaling
        return options

    def serve_config_file(self, cohort_dir: str, serve_options: dict[str, Any]) -> dict[str, Any]:
        """The Serve config file (as data) that deploys this application with ``serve deploy``.

        Args:
            cohort_dir: the cohort folder, at the same path on every node.
            serve_options: ``ServeConfig`` fields that differ from their defaults.
        """
        host = serve_options.get("host", "127.0.0.1")
        port = serve_options.get("port", 8000)
        drain = float(serve_options.get("drain_timeout_s", 30.0))
        level = str(serve_options.get("log_level", "info")).upper()
        return {
            "proxy_location": self.proxy_location,
            "http_options": {"host": host, "port": port},
            "applications": [
                {
                    "name": self.app_name,
                    "route_prefix": "/",
                    "import_path": APP_BUILDER,
                    "args": {"cohort": cohort_dir, "serve": serve_options},
                    "deployments": [
                        {"name": INGRESS, **self.ingress_options(drain, level)},
                        {
                            "name": COORDINATOR,
                            "num_replicas": 1,
                            "ray_actor_options": {"num_cpus": 0},
                        },
                    ],
                }
            ],
        }
