"""``shoal serve COHORT --ray``: join (or start) a Ray cluster, run the application, wait for
SIGTERM / Ctrl-C, then drain it: every replica stops accepting (503 with Retry-After) and
answers what it accepted, and the application is deleted."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError, ShoalError
from shoal.serve.cluster.config import COORDINATOR, RayConfig

log = logging.getLogger("shoal.serve.cluster")


def serve_options(config: Any, ray_config: RayConfig) -> dict[str, Any]:
    """The ``ServeConfig`` fields that differ from their defaults, as each replica gets them
    (threads default to the CPUs a replica holds; GPU replicas run on 'cuda')."""
    defaults = type(config)()
    options = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(defaults, f.name)
    }
    if config.threads is None and ray_config.cpus_per_replica >= 1:
        options["threads"] = int(ray_config.cpus_per_replica)
    if ray_config.gpus_per_replica and config.device == "cpu":
        options["device"] = "cuda"
    return options


def write_serve_config(cohort_dir: str, config: Any, ray_config: RayConfig) -> Path:
    """Write the Serve config file equivalent to the flags (for ``serve deploy``)."""
    import yaml

    options = serve_options(config, ray_config)
    if "api_key" in options:
        raise ConfigError(
            "a Serve config file would hold the API key in plain text; leave --api-key out and "
            "set SHOAL_API_KEY in the application's runtime_env (env_vars), or give "
            "--api-key-file with a path every node has"
        )
    out = Path(str(ray_config.ray_config_out))
    data = ray_config.serve_config_file(str(Path(cohort_dir).resolve()), options)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def prepare_environment(ray_config: RayConfig, port: int) -> None:
    """Before Ray is imported: a local Ray and this process use token authentication (Ray
    reads the mode once, at import), with a token made if ~/.ray has none, and the variables
    the placement needs (``RayConfig.environment``; a cluster started elsewhere must have
    them from its own start)."""
    if ray_config.ray_address or os.environ.get("RAY_ADDRESS"):
        return
    for name, value in ray_config.environment(port).items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    token = Path.home() / ".ray" / "auth_token"
    if os.environ["RAY_AUTH_MODE"] == "token" and not (
        token.is_file() or os.environ.get("RAY_AUTH_TOKEN")
    ):
        ray_bin = Path(sys.executable).with_name("ray")
        subprocess.run(
            [str(ray_bin) if ray_bin.exists() else "ray", "get-auth-token", "--generate"],
            stdout=subprocess.DEVNULL,
            check=True,
        )


def serve_on_ray(cohort_dir: str, config: Any, ray_config: RayConfig) -> None:
    """Run the cohort on Ray Serve until SIGTERM / Ctrl-C, then drain and delete it."""
    import ray
    from ray import serve

    from shoal.models.cohort_folder import read_cohort
    from shoal.serve.cluster.deployment import build_application

    cohort = str(Path(cohort_dir).resolve())
    read_cohort(cohort)  # a bad folder fails here, once, not in every replica
    options = serve_options(config, ray_config)
    address = ray_config.ray_address or os.environ.get("RAY_ADDRESS")
    # Until the application runs, SIGTERM / Ctrl-C stop start-up through the cleanup below
    # (a local Ray is stopped, not left behind); then they start the drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    local = None
    try:
        if not address:
            local = LocalRay.start()
        else:
            _check_reachable(address)
        try:
            ray.init(address=address or local.address, log_to_driver=True)  # type: ignore[union-attr]
        except (ConnectionError, RuntimeError) as e:
            raise ShoalError(
                f"cannot join the Ray cluster at {address} ({_first_line(e)}); start one with "
                "`ray start --head`, or leave --ray-address out for a local Ray"
            ) from None
        serve.start(
            http_options={"host": config.host, "port": config.port},
            proxy_location=ray_config.proxy_location,
            # the replicas log each request themselves; the proxy's access log would repeat it
            logging_config={"log_level": config.log_level.upper(), "enable_access_log": False},
        )
        app = build_application(cohort, options, ray_config, config.drain_timeout_s)
        try:
            serve.run(app, name=ray_config.app_name, route_prefix="/")
        except Exception as e:  # a replica's constructor raised: its first line says why
            raise ShoalError(f"the Ray Serve application did not start: {_first_line(e)}") from None
        direct = ""
        if ray_config.proxy == "direct":
            direct = "; replicas answer directly at " + _direct_addresses(ray_config, config)
        # printed at any log level: supervisors and scripts wait for this line
        print(
            f"shoal: serving {cohort} on http://{config.host}:{config.port} through Ray Serve "
            f"({address or 'a local Ray'}) with "
            f"{json.dumps(ray_config.ingress_options(config.drain_timeout_s))}{direct}",
            file=sys.stderr,
            flush=True,
        )
        _wait_for_signal()
        drain(ray_config.app_name, config.drain_timeout_s)
        serve.delete(ray_config.app_name)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # the cleanup itself is not interrupted
        if local is not None and ray.is_initialized():
            with contextlib.suppress(Exception):
                serve.shutdown()
        ray.shutdown()
        if local is not None:
            local.stop()


def replica_addresses(app_name: str, host: str) -> list[str]:
    """``http://IP:PORT`` of each replica of the application that answers HTTP itself (Serve's
    direct ingress), as Serve's controller lists them for load balancers (without direct
    ingress it lists the proxies instead). Replicas listen on ``host`` (--host) of their node:
    its address there when that is all interfaces, else ``host`` itself."""
    import ray
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    groups = ray.get(controller.get_target_groups.remote(app_name), timeout=30)
    return sorted(
        f"http://{t.ip if host in ('0.0.0.0', '::') else host}:{t.port}"
        for g in groups
        if g.protocol == "HTTP" and g.app_name in ("", app_name)
        for t in g.targets
    )


def _direct_addresses(ray_config: RayConfig, config: Any) -> str:
    """The replicas' own addresses, for the ready line; a warning when the cluster was not
    started with direct ingress (its replicas then answer through the proxy only)."""
    proxy = f":{config.port}"  # the proxies' port: what the listing holds without direct ingress
    try:
        addresses = [
            a for a in replica_addresses(ray_config.app_name, config.host) if not a.endswith(proxy)
        ]
    except Exception as e:  # the controller's listing is Serve's alpha API
        log.warning("cannot list the replicas' addresses (%s); see their logs", _first_line(e))
        return "(see the replicas' logs)"
    if not addresses:
        variables = " ".join(f"{k}={v}" for k, v in ray_config.environment(config.port).items())
        log.warning(
            "--proxy direct: the cluster's replicas do not answer HTTP themselves; start every "
            "node with %s before `ray start`",
            variables,
        )
        return "(none: direct ingress is off in this cluster)"
    return ", ".join(addresses)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on (Ray itself retries for minutes)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise ShoalError(
            f"no Ray cluster answers at {address} ({e}); start one there with "
            "`ray start --head --port PORT`, or leave --ray-address out for a local Ray"
        ) from None


def _exit_on_signal(sig: int, frame: Any) -> None:
    raise SystemExit(128 + sig)


class LocalRay:
    """A one-node Ray started for this server (``ray start --head --block``) in a session of
    its own, so a signal to the server's process group (Ctrl-C, a supervisor's SIGTERM) reaches
    the server, which drains, and not Ray's processes under it; stopped after the drain."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str) -> None:
        self.proc = proc
        self.address = address

    @classmethod
    def start(cls, timeout_s: float = 120.0) -> LocalRay:
        """Start it; its HTTP proxy spreads requests over every replica (with one proxy,
        Ray's default preference for replicas on the proxy's node would load one only)."""
        import ray

        port = _free_port()
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_bin) if ray_bin.exists() else "ray",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        cmd.append("--node-ip-address=127.0.0.1")  # loopback, like the server itself
        env = {**os.environ, "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
        # its output goes to a file: a pipe nobody reads would fill and stall it
        with tempfile.NamedTemporaryFile(
            prefix="shoal-ray-start-", suffix=".log", delete=False
        ) as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        address = f"127.0.0.1:{port}"
        local = cls(proc, address)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    err = Path(log.name).read_text(errors="replace").strip()[-500:]
                    raise ShoalError(f"could not start a local Ray ({log.name}): {err}")
                try:
                    ray.init(address=address, log_to_driver=False)
                    ray.shutdown()
                    return local
                except (ConnectionError, RuntimeError):
                    time.sleep(0.5)
            raise ShoalError(f"a local Ray did not start within {timeout_s} s; see {log.name}")
        except BaseException:  # also a signal during start-up: leave nothing running
            local.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to its session, then SIGKILL to whatever of it is left after 5 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # Ray's processes it started, if any remain
        self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drain(app_name: str, timeout_s: float) -> bool:
    """Tell every replica to stop accepting, then wait until none has work left (or
    ``timeout_s``). True when every accepted request was answered in time."""
    from ray import serve

    from shoal.serve.cluster.deployment import REPORT_EVERY_S

    coordinator = serve.get_deployment_handle(COORDINATOR, app_name=app_name)
    coordinator.drain.remote().result()
    log.info("draining: new requests get 503; answering the accepted ones")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = coordinator.status.remote(3 * REPORT_EVERY_S).result()  # the live ones
        if status and all(r["draining"] and r["busy"] == 0 for r in status.values()):
            log.info("drained every replica; deleting the application")
            return True
        time.sleep(0.2)
    log.warning("drain timed out after %s s; deleting the application", timeout_s)
    return False


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: stop.set())
    stop.wait()


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    shoal = [ln for ln in lines if "Error:" in ln and "shoal" in ln.lower()]
    return (shoal or lines or [type(e).__name__])[-1]
