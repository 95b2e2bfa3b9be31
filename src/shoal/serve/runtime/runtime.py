"""The runtime the serving engine calls: start it, execute batches, read its cost model, close.

    runtime = Runtime.start("runs/cohort", RuntimeConfig(workers=2))
    logits = runtime.execute(input_ids, attention_mask, token_type_ids, k=3)
    logits = runtime.run_batch(Batch(input_ids, attention_mask, token_type_ids, k=3))  # numpy
    seconds = runtime.cost_model.cost(k=3, batch=8, length=32)
    runtime.close()

With ``workers=0`` the cohort runs fused in the calling process; otherwise a ``WorkerPool``
holds the students in worker processes. Either way ``execute`` returns the same logits. The
engine, which imports no torch, calls ``run_batch`` with a ``Batch`` of numpy arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.models.cohort import ShoalModel
from shoal.serve.batch import Batch
from shoal.serve.costmodel import CostModel
from shoal.serve.runtime.config import RuntimeConfig, set_serving_environment
from shoal.serve.runtime.handle import WorkerStatus
from shoal.serve.runtime.pool import WorkerPool
from shoal.serve.runtime.profile import ProfileConfig, load_or_profile
from shoal.serve.runtime.runner import ArrayLike, LocalRunner

log = logging.getLogger(__name__)


class Runtime:
    """A started cohort: in-process (``workers=0``) or on worker processes."""

    def __init__(
        self,
        executor: LocalRunner | WorkerPool,
        config: RuntimeConfig,
        cost_model: CostModel | None,
    ) -> None:
        self.executor = executor
        self.config = config
        self.cost_model = cost_model
        """Measured ``cost(k, batch, padded_length)``; None when started with profile=None."""

    @classmethod
    def start(
        cls,
        cohort_dir: str | Path,
        config: RuntimeConfig = RuntimeConfig(),
        *,
        profile: ProfileConfig | None = ProfileConfig(),
        cache_dir: str | Path | None = None,
        refresh_profile: bool = False,
        check: Callable[[Runtime], None] | None = None,
    ) -> Runtime:
        """Load the cohort onto the layout, health-check it and load or measure its costs.

        Args:
            cohort_dir: a folder written by ``ShoalModel.save_pretrained``.
            profile: the grid to measure; None skips profiling (``cost_model`` is None).
            cache_dir: where cost profiles are cached; None: ``~/.cache/shoal/profiles``.
            refresh_profile: measure again even when a cached profile exists.
            check: called with the loaded runtime before profiling (the model self-check,
                ``selfcheck.self_check``), so a broken cohort is refused at once; what it
                raises closes the runtime and propagates.
        """
        set_serving_environment(os.environ)  # before the first forward pass and any worker
        executor: LocalRunner | WorkerPool
        if config.workers == 0:
            device = "cuda:0" if config.device == "cuda" else config.device
            model = ShoalModel.from_pretrained(cohort_dir, device)
            executor = LocalRunner(model, device, config.dtype, config.threads, config.backend)
            executor.warmup()
        else:
            executor = WorkerPool(cohort_dir, config)
        runtime = cls(executor, config, None)
        try:
            if check is not None:
                check(runtime)
            if profile is not None:
                runtime.cost_model = load_or_profile(
                    executor,
                    model_config=asdict(runtime.model.config),
                    layout=asdict(config),
                    device=config.device,
                    profile=profile,
                    cache_dir=cache_dir,
                    refresh=refresh_profile,
                )
        except BaseException:
            runtime.close()
            raise
        return runtime

    @property
    def model(self) -> ShoalModel:
        """The cohort (in a pool: the parent's CPU copy, used for the head)."""
        return self.executor.model

    @property
    def n_students(self) -> int:
        return self.model.n_students

    @property
    def meta(self) -> dict[str, Any]:
        """The cohort's ``shoal_meta.json`` (per-prefix accuracy for the pruning policy)."""
        return self.model.meta

    def execute(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None,
        token_type_ids: ArrayLike | None,
        k: int,
    ) -> torch.Tensor:
        """Logits of one padded batch with the first k students.

        Args:
            input_ids, attention_mask, token_type_ids: (B, L) int torch tensors or numpy
                arrays; mask and types may be None.
        Returns:
            (B, num_labels) float32 CPU tensor.
        Raises:
            ConfigError: k outside 1..N.
            WorkerCrashed: a worker died on every attempt (the batch failed; the worker was
                restarted). WorkerError: a worker raised on this batch.
        """
        return self.executor.run(input_ids, attention_mask, token_type_ids, k)

    def run_batch(self, batch: Batch) -> np.ndarray:
        """``execute`` on a ``Batch``: (B, num_labels) float32 logits as a numpy array."""
        return self.execute(
            batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.k
        ).numpy()

    def health(self) -> list[WorkerStatus]:
        """Ping the workers, restarting any that is dead or hung; in-process: one entry."""
        if isinstance(self.executor, WorkerPool):
            return self.executor.check_health()
        return [
            WorkerStatus(
                0,
                str(self.executor.device),
                (),
                tuple(range(self.n_students)),
                os.getpid(),
                True,
                0,
            )
        ]

    def status(self) -> list[WorkerStatus]:
        """Each worker as it stands now, without pinging (cheap enough for every /health and
        metrics scrape); in-process: one entry, alive."""
        if isinstance(self.executor, WorkerPool):
            return self.executor.status()
        return [
            WorkerStatus(
                0,
                str(self.executor.device),
                (),
                tuple(range(self.n_students)),
                os.getpid(),
                True,
                0,
            )
        ]

    def close(self) -> None:
        """Stop the workers (no-op in-process). Idempotent."""
        if isinstance(self.executor, WorkerPool):
            self.executor.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
