"""Two shapes of one cohort on Ray Serve, timed side by side through ``DeploymentHandle`` calls
(no HTTP, no engine): whole-cohort replicas, each running every student fused (what ``shoal
serve --ray`` deploys), against the students spread over deployments of their own, fanned out
per request and summed before the head (the paper's one-student-per-device layout).

    shoal bench ray-shapes --cohort runs/cohort --data ../shared/data/sst2 --out docs/results/ray

Each shape gets the same CPUs: whole = ``cpus`` replicas x 1 thread; fan-out = one shard per
student group over ``cpus`` one-thread shards, plus a router with no CPU of its own. Reported:
p50 of one request at a time (batch 1 and ``batch``) and requests per second with
``concurrency`` callers; the fan-out's logits are checked against the whole cohort's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ShapesConfig:
    """One comparison of the two shapes."""

    cohort: str
    data: str = "default"
    split: str = "test"
    out: str = "runs/bench/ray-shapes"
    cpus: int = 2
    """CPUs each shape gets (replicas of the whole cohort, or student shards)."""
    batch: int = 32
    """The larger batch timed besides batch 1."""
    max_length: int = 64
    calls: int = 100
    """Sequential calls per latency measurement."""
    concurrency: int = 8
    """Callers in flight for the throughput measurement."""
    seconds: float = 10.0
    """Length of each throughput measurement."""

    def __post_init__(self) -> None:
        for name in ("cpus", "batch", "max_length", "calls", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if not self.seconds > 0:
            raise ConfigError(f"seconds={self.seconds} must be > 0")


def _runner(cohort: str) -> Any:
    """The cohort on one thread of this actor (every shape gets one thread per CPU)."""
    from shoal.models.cohort import ShoalModel
    from shoal.serve.runtime.runner import LocalRunner

    return LocalRunner(ShoalModel.from_pretrained(cohort), threads=1)


def _deployments() -> tuple[Any, Any, Any]:
    from ray import serve

    @serve.deployment(max_ongoing_requests=64)
    class Whole:
        def __init__(self, cohort: str) -> None:
            self.runner = _runner(cohort)
            self.runner.warmup()

        def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return self.runner.run(ids, mask, None, self.runner.n_students).numpy()

    @serve.deployment(max_ongoing_requests=64)
    class Shard:
        def __init__(self, cohort: str, students: list[int]) -> None:
            self.runner = _runner(cohort)
            self.students = students
            self.runner.warmup(students)

        def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            k = self.runner.n_students
            return self.runner.partial_sum(ids, mask, None, self.students, k).numpy()

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class FanOut:
        def __init__(self, cohort: str, *shards: Any) -> None:
            self.head = _runner(cohort)
            self.shards = shards

        async def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            import torch

            parts = await asyncio.gather(*(s.remote(ids, mask) for s in self.shards))
            return self.head.finish(torch.from_numpy(np.sum(parts, axis=0))).numpy()

    return Whole, Shard, FanOut


def _inputs(config: ShapesConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    from shoal.data import load_task
    from shoal.models.cohort_folder import load_tokenizer

    split = load_task(config.data).splits[config.split]
    texts = [split.texts[i % len(split)] for i in range(n)]
    enc = load_tokenizer(config.cohort)(
        texts, truncation=True, max_length=config.max_length, padding=True, return_tensors="np"
    )
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def _latency_ms(handle: Any, ids: np.ndarray, mask: np.ndarray, calls: int) -> float:
    handle.remote(ids, mask).result()  # warm-up
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        handle.remote(ids, mask).result()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _throughput(
    handle: Any, ids: np.ndarray, mask: np.ndarray, callers: int, seconds: float
) -> float:
    """Requests per second with ``callers`` requests always in flight."""
    done = 0
    stop = time.perf_counter() + seconds
    pending = [handle.remote(ids, mask) for _ in range(callers)]
    t0 = time.perf_counter()
    while time.perf_counter() < stop:
        next_round = []
        for response in pending:
            response.result()
            done += 1
            next_round.append(handle.remote(ids, mask))
        pending = next_round
    for response in pending:
        response.result()
        done += 1
    return done / (time.perf_counter() - t0)


def _groups(n_students: int, shards: int) -> list[list[int]]:
    """Contiguous, ascending student blocks, one per shard (at most one shard per student)."""
    shards = min(shards, n_students)
    bounds = np.linspace(0, n_students, shards + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def run_shapes(config: ShapesConfig) -> dict[str, Any]:
    """Deploy each shape on a local Ray in turn, time it; write ``shapes.json``."""

    import ray
    from ray import serve

    from shoal.bench.report import write_json
    from shoal.bench.serve_bench import machine
    from shoal.models.cohort_folder import read_config

    n_students = int(read_config(config.cohort)["n_students"])
    ids1, mask1 = _inputs(config, 1)
    idsb, maskb = _inputs(config, config.batch)
    cohort = str(Path(config.cohort).resolve())
    whole_cls, shard_cls, fanout_cls = _deployments()
    groups = _groups(n_students, config.cpus)
    shapes = {
        "whole": whole_cls.options(
            num_replicas=config.cpus, ray_actor_options={"num_cpus": 1}
        ).bind(cohort),
        "fan_out": fanout_cls.bind(
            cohort,
            *(
                shard_cls.options(name=f"Shard{i}", ray_actor_options={"num_cpus": 1}).bind(
                    cohort, g
                )
                for i, g in enumerate(groups)
            ),
        ),
    }
    results: dict[str, Any] = {
        "config": asdict(config),
        "machine": machine(),
        "students": n_students,
        "shard_students": groups,
        "shapes": {},
    }
    ray.init(address="local", num_cpus=config.cpus, include_dashboard=False, log_to_driver=False)
    try:
        logits = {}
        for name, app in shapes.items():
            handle = serve.run(app, name=name, route_prefix=None)
            logits[name] = handle.remote(idsb, maskb).result()
            results["shapes"][name] = {
                "p50_ms_b1": _latency_ms(handle, ids1, mask1, config.calls),
                f"p50_ms_b{config.batch}": _latency_ms(handle, idsb, maskb, config.calls // 4 or 1),
                "requests_per_s_b1": _throughput(
                    handle, ids1, mask1, config.concurrency, config.seconds
                ),
            }
            serve.delete(name)
        results["max_abs_logit_diff"] = float(np.abs(logits["whole"] - logits["fan_out"]).max())
    finally:
        serve.shutdown()
        ray.shutdown()
    w, f = results["shapes"]["whole"], results["shapes"]["fan_out"]
    results["fan_out_over_whole"] = {k: round(f[k] / w[k], 3) for k in w}
    write_json(results, Path(config.out) / "shapes.json")
    return results
