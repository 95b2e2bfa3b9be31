"""How much latency the load generator itself adds, per transport, with many requests in flight.

A stub server (its own process) answers every ``POST /predict`` after exactly ``--delay-ms``;
the open-loop sender drives it at ``--rate`` requests/s for ``--seconds``. With a 1 s delay and
100 requests/s about 100 requests are in flight at once. Anything the client measures above
the delay is the client's (and the loopback's) own cost. Writes a JSON summary.

    python scripts/loadgen_check.py --out docs/results/loadgen_check.json

Reproduces the transport table of docs/results/serve.md ("Why the raw-socket load generator").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

from shoal.bench.launch import free_port, stop, wait_healthy
from shoal.bench.loadgen import run_load_sync
from shoal.bench.workload import Request, Workload

STUB = """
import asyncio, sys
import uvicorn
from fastapi import FastAPI

app = FastAPI()
delay = float(sys.argv[2]) / 1000

@app.get("/health")
async def health():
    return {"status": "ok"}

@app.post("/predict")
async def predict(body: dict):
    await asyncio.sleep(delay)
    return [{"label": "positive", "score": 0.9}, {"label": "negative", "score": 0.1}]

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, backlog=4096)
"""


def _workload(rate: float, seconds: float) -> Workload:
    n = int(rate * seconds)
    reqs = [
        Request(offset_s=i / rate, text=f"request {i}", text_pair=None, label=1) for i in range(n)
    ]
    return Workload(requests=reqs, label_names=["negative", "positive"], duration_s=seconds)


def measure(client: str, rate: float, seconds: float, delay_ms: float) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", STUB, str(port), str(delay_ms)])
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(server, url, Path("(the stub's stderr)"), timeout_s=60)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        result = run_load_sync(
            url,
            _workload(rate, seconds),
            timeout_s=30.0,
            max_connections=1024,
            client=client,  # type: ignore[arg-type]
        )
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        stop(server, grace_s=30)
    ok = [r for r in result.records if r.status == 200]
    lat = np.array([r.latency_s * 1e3 for r in ok]) if ok else np.array([np.nan])
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "client": client,
        "rate_rps": rate,
        "seconds": seconds,
        "server_delay_ms": delay_ms,
        "requests": len(result.records),
        "answered": len(ok),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "client_added_p50_ms": float(np.percentile(lat, 50) - delay_ms),
        "client_added_p99_ms": float(np.percentile(lat, 99) - delay_ms),
        "client_cpu_ms_per_request": 1e3 * cpu / max(1, len(result.records)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--delay-ms", type=float, default=1000.0)
    p.add_argument("--clients", default="raw,httpx")
    p.add_argument("--out", default="docs/results/loadgen_check.json")
    args = p.parse_args()
    rows = [measure(c, args.rate, args.seconds, args.delay_ms) for c in args.clients.split(",")]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "command": "python " + " ".join(sys.argv),
        "commit": commit,
        "machine": {"cores": os.cpu_count(), "platform": sys.platform},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for r in rows:
        print(
            f"{r['client']:>6}: {r['answered']}/{r['requests']} answered, client adds "
            f"p50 {r['client_added_p50_ms']:.1f} ms, p99 {r['client_added_p99_ms']:.1f} ms, "
            f"{r['client_cpu_ms_per_request']:.2f} CPU ms per request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
