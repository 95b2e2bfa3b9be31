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
import random
import time
from pathlib import Path

import httpx

from shoal.bench.overload_server import ServerProcess
from shoal.provenance import git_commit

WORDS = ["the", "a", "movie", "good", "bad", "great", "awful", "plot", "actor", "scene"]


def run_one(args: argparse.Namespace, extra: dict[str, str], log: Path) -> dict:
    server = ServerProcess(args.cohort, log, flags=(), env=extra)
    rng = random.Random(args.seed)
    requests = 0
    try:
        server.wait_ready()
        with server.sampling_memory(every_s=args.sample_s), httpx.Client(timeout=30) as client:
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                n = rng.randint(1, args.max_inputs)
                inputs = [
                    [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, args.max_words)))]
                    for _ in range(n)
                ]
                client.post(f"{server.url}/predict", json={"inputs": inputs}).raise_for_status()
                requests += 1
    finally:
        server.stop()
    samples = [(round(t, 1), round(mb, 1)) for t, mb in server.rss_mb]
    if not samples:
        raise SystemExit(f"error: no memory sample in {args.seconds} s; lower --sample-s")
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


def parse_env(spec: str) -> dict[str, str]:
    """``"A=1 B=2"`` as a dict; a word without ``=`` is refused."""
    bad = [item for item in spec.split() if "=" not in item]
    if bad:
        raise SystemExit(f"error: --env {spec!r}: {bad[0]!r} is not NAME=VALUE")
    return dict(item.split("=", 1) for item in spec.split())


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
    if not 0 < args.sample_s < args.seconds:
        parser.error("--sample-s and --seconds must be above 0, --sample-s below --seconds")
    envs = [parse_env(spec) for spec in args.env or [""]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, extra in enumerate(envs):
        result = run_one(args, extra, args.out.parent / f"server_rss_{i}.log")
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
        runs.append(result)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"config": config, "commit": git_commit(), "runs": runs}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
