"""Ray Serve's own cost per request on this machine: an empty Serve application (one FastAPI
route answering a constant), timed through Ray's HTTP proxy and, with direct ingress, on the
replica's own port. Reproduces the floor quoted in docs/results/ray.md.

    python scripts/ray_floor.py --requests 200
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import time

PROXY_PORT, REPLICA_PORT = 8123, 8124
os.environ.update(
    RAY_SERVE_ENABLE_DIRECT_INGRESS="1",
    RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(REPLICA_PORT),
    RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(REPLICA_PORT + 100),
)

import ray  # noqa: E402  (reads the variables above at import)
from fastapi import FastAPI  # noqa: E402
from ray import serve  # noqa: E402

app = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 1}, logging_config={"enable_access_log": False})
@serve.ingress(app)
class Empty:
    @app.post("/predict")
    async def predict(self, body: dict) -> list[dict]:
        return [{"label": "x", "score": 1.0}]


def timed(port: int, n: int) -> dict[str, float]:
    """p50 / p99 ms of ``n`` sequential requests on one connection (the first 20 dropped)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body, headers = json.dumps({"inputs": "hello"}), {"content-type": "application/json"}
    ms = []
    for _ in range(n + 20):
        t0 = time.perf_counter()
        conn.request("POST", "/predict", body=body, headers=headers)
        conn.getresponse().read()
        ms.append((time.perf_counter() - t0) * 1e3)
    ms = sorted(ms[20:])
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(ms[int(0.99 * n)], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    n = ap.parse_args().requests
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PROXY_PORT})
    serve.run(Empty.bind(), route_prefix="/")
    time.sleep(2)
    print(json.dumps({"proxy": timed(PROXY_PORT, n), "replica": timed(REPLICA_PORT, n)}))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
