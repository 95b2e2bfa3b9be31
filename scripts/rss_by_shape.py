"""Where a serving process's memory goes as it meets new batch shapes.

Starts ``shoal serve COHORT`` (default flags) once per environment given, sends it requests of
random batch size (1 to ``--max-inputs`` inputs) and random length (1 to ``--max-words``
words), one at a time, for ``--seconds``, and samples the server's resident memory. Every new
(inputs, padded length) pair is a batch shape the runtime has not run before. Writes one JSON
with each run's samples and requests per second.

    python scripts/rss_by_shape.py runs/demo/cohort --seconds 150 \\
        --out docs/results/serve-rss/rss_by_shape.json \\
        --env "" --env ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024

Reproduces the memory table of docs/results/serve.md ("Memory under new batch shapes").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shoal.bench.launch import free_port, stop, wait_healthy
from shoal.bench.overload_server import _rss_mb
from shoal.provenance import git_commit

WORDS = ["the", "a", "movie", "good", "bad", "great", "awful", "plot", "actor", "scene"]


def run_one(args: argparse.Namespace, env_spec: str, log: Path) -> dict:
    extra = dict(item.split("=", 1) for item in env_spec.split() if "=" in item)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "shoal.serve.server", args.cohort, "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **extra}
        )
    rng = random.Random(args.seed)
    samples: list[tuple[float, float]] = []
    requests = 0
    try:
        wait_healthy(proc, url, log)
        t0 = time.monotonic()
        next_sample = 0.0
        with httpx.Client(timeout=30) as client:
            while (t := time.monotonic() - t0) < args.seconds:
                if t >= next_sample:
                    samples.append((round(t, 1), round(_rss_mb(proc.pid), 1)))
                    next_sample += args.sample_s
                n = rng.randint(1, args.max_inputs)
                inputs = [
                    [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, args.max_words)))]
                    for _ in range(n)
                ]
                client.post(f"{url}/predict", json={"inputs": inputs}).raise_for_status()
                requests += 1
        samples.append((round(args.seconds, 1), round(_rss_mb(proc.pid), 1)))
    finally:
        stop(proc)
    rss = [mb for _, mb in samples]
    warm = [mb for t, mb in samples if t >= args.warm_up_s]
    return {
        "env": extra,
        "requests": requests,
        "requests_per_s": round(requests / args.seconds, 2),
        "rss_mb": {
            "first": rss[0],
            "after_warm_up": warm[0] if warm else None,
            "end": rss[-1],
            "max": max(rss),
            "growth_after_warm_up": round(rss[-1] - warm[0], 1) if warm else None,
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/rss_by_shape.json"))
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--warm-up-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--max-inputs", type=int, default=32)
    parser.add_argument("--max-words", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--env",
        action="append",
        default=None,
        help="space-separated NAME=VALUE pairs for one run's server ('' for none); repeatable",
    )
    args = parser.parse_args()
    if not Path(args.cohort, "shoal_meta.json").is_file():
        parser.error(f"{args.cohort} is not a cohort folder (no shoal_meta.json)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, env_spec in enumerate(args.env or [""]):
        result = run_one(args, env_spec, args.out.parent / f"server_rss_{i}.log")
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
        runs.append(result)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"config": config, "commit": git_commit(), "runs": runs}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
