"""Write deploy/ray/serve.yaml (what `shoal serve --ray-config-out` writes for the documented
flags) and the serveConfigV2 of deploy/ray/rayservice.yaml from it; tests/unit check both.

    python scripts/write_ray_deploy.py
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shoal.serve.cluster.config import RayConfig
from shoal.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
COHORT = "/mnt/models/cohort"
RAY = RayConfig(ray=True, replicas=2, max_replicas=8, cpus_per_replica=2)
SERVE = ServeConfig(host="0.0.0.0")
HEADER = f"""# Serve config for `serve deploy deploy/ray/serve.yaml` on a running Ray cluster;
# written by `shoal serve {COHORT} --ray --replicas 2 --max-replicas 8 --cpus-per-replica 2
# --host 0.0.0.0 --ray-config-out deploy/ray/serve.yaml`.
# The cohort folder must be at the same path on every node (a shared volume).
"""


def serve_file() -> str:
    from shoal.serve.cluster.launch import serve_options

    data = RAY.serve_config_file(COHORT, serve_options(SERVE, RAY))
    return HEADER + yaml.safe_dump(data, sort_keys=False)


def rayservice_file(serve_text: str) -> str:
    """deploy/ray/rayservice.yaml with its serveConfigV2 block replaced by the applications."""
    apps = yaml.safe_dump(
        {"applications": yaml.safe_load(serve_text)["applications"]}, sort_keys=False
    )
    block = "".join("    " + line + "\n" for line in apps.splitlines())
    path = ROOT / "deploy/ray/rayservice.yaml"
    text = path.read_text()
    return re.sub(r"(  serveConfigV2: \|\n)(?:    .*\n)+", lambda m: m.group(1) + block, text)


def main() -> None:
    serve_text = serve_file()
    (ROOT / "deploy/ray/serve.yaml").write_text(serve_text)
    (ROOT / "deploy/ray/rayservice.yaml").write_text(rayservice_file(serve_text))
    print("wrote deploy/ray/serve.yaml and deploy/ray/rayservice.yaml")


if __name__ == "__main__":
    main()
