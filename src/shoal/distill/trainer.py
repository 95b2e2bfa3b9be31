"""A training loop that knows nothing about the model: it calls ``step(batch) -> loss``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from shoal.distill.config import TrainConfig
from shoal.errors import ConfigError

__all__ = ["Checkpoint", "TrainConfig", "TrainResult", "param_groups", "train"]


@dataclass
class TrainResult:
    """What a run did: steps, seconds, the best evaluation score and the loss curve."""

    steps: int = 0
    seconds: float = 0.0
    best_score: float = -math.inf
    history: list[dict[str, float]] = field(default_factory=list)


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Checkpoint:
    """One resumable training state on disk: the parameters, AdamW's moments, the schedule,
    the position in the epoch, the random state of dropout and the best score so far.

    Written atomically (a temporary file, then a rename), so a run killed while saving
    resumes from the previous checkpoint. A resumed run takes the same batches in the same
    order with the same dropout masks, so it ends where an uninterrupted run would.
    """

    def __init__(self, path: str | Path, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"fingerprint": self.fingerprint, **state}, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = torch.load(self.path, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which, not a traceback
            raise ConfigError(
                f"cannot resume from {self.path}: {e}; delete it to start over"
            ) from None
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"{self.path} was written by a run with other settings "
                f"({_diff(state.get('fingerprint'), self.fingerprint)}); resume with the "
                "same command, or delete the checkpoint to start over"
            )
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _diff(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable settings"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) or "none"


class _Run:
    """One run's changing state: AdamW and its schedule, where the run stands (steps done,
    the epoch, batches of it already taken, the smoothed loss, seconds spent before this
    process) and what it found (``result``). A checkpoint holds all of it."""

    def __init__(
        self,
        named_params: Sequence[tuple[str, torch.nn.Parameter]],
        config: TrainConfig,
        total: int,
    ) -> None:
        warm = int(total * config.warmup)
        self.named_params = named_params
        self.params = [p for _, p in named_params if p.requires_grad]
        self.opt = torch.optim.AdamW(param_groups(named_params, config.weight_decay), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda s: (
                (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
            ),
        )
        self.config = config
        self.result = TrainResult()
        self.done, self.epoch, self.skip, self.running, self.spent = 0, 0, 0, 0.0, 0.0
        self.start = time.perf_counter()

    def optimise(self, loss: torch.Tensor) -> None:
        """One AdamW step on ``loss`` (clipped gradients), then the smoothed loss."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.done}; lower --lr (now {self.config.lr})"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.opt.step()
        self.sched.step()
        self.done += 1
        self.running = 0.98 * self.running + 0.02 * loss.item() if self.done > 1 else loss.item()

    def seconds(self) -> float:
        return self.spent + time.perf_counter() - self.start

    def state(self, in_epoch: int) -> dict[str, Any]:
        """What ``Checkpoint.save`` writes, ``in_epoch`` batches into the current epoch."""
        return {
            "params": {n: p.detach().cpu() for n, p in self.named_params},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": torch.get_rng_state(),
            "done": self.done,
            "epoch": self.epoch,
            "in_epoch": in_epoch,
            "running": self.running,
            "seconds": self.seconds(),
            "best_score": self.result.best_score,
            "history": self.result.history,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a ``state`` written by a run of the same settings."""
        with torch.no_grad():
            named = dict(self.named_params)
            for name, value in state["params"].items():
                named[name].copy_(value)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.done, self.epoch, self.skip = state["done"], state["epoch"], state["in_epoch"]
        self.running, self.spent = state["running"], state["seconds"]
        self.result.best_score, self.result.history = state["best_score"], state["history"]


def train(
    named_params: Sequence[tuple[str, torch.nn.Parameter]],
    step: Callable[[Any], torch.Tensor],
    batches: Callable[[int], Sequence[Any]],
    config: TrainConfig,
    *,
    evaluate: Callable[[], float] | None = None,
    on_best: Callable[[float], None] | None = None,
    set_train: Callable[[bool], None] | None = None,
    desc: str = "train",
    checkpoint: Checkpoint | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run AdamW over ``batches(epoch)`` calling ``step``; evaluate and keep the best.

    Args:
        named_params: the parameters to optimise.
        step: computes the loss of one batch (forward only; the loop does backward).
        batches: the batches of epoch ``e`` (a fresh shuffle each epoch); a given epoch must
            give the same batches every time it is asked for (resume relies on it).
        evaluate: higher is better; called ``evals_per_epoch`` times an epoch.
        on_best: called with the score whenever ``evaluate`` improves on the best so far.
        set_train: switches the model between train and eval mode.
        checkpoint: where the resumable state is written every ``config.checkpoint_every``
            steps and after each evaluation; removed when the run ends.
        resume: continue from ``checkpoint`` when it exists (a fresh start otherwise).
    """
    torch.manual_seed(config.seed)
    first = batches(0)
    per_epoch = len(first)
    total = max(1, int(math.ceil(per_epoch * config.epochs)))
    if config.max_steps:
        total = min(total, config.max_steps)
    run = _Run(named_params, config, total)
    if checkpoint is not None and resume and checkpoint.exists():
        run.restore(checkpoint.load())
        tqdm.write(f"[{desc}] resumed from {checkpoint.path} at step {run.done}/{total}")
    eval_at = {
        int(per_epoch * (i + 1) / config.evals_per_epoch) for i in range(config.evals_per_epoch)
    }
    run.start = time.perf_counter()
    bar = tqdm(total=total, initial=run.done, desc=desc, unit="step", dynamic_ncols=True)
    while run.done < total:
        if set_train:
            set_train(True)
        for i, batch in enumerate(first if run.epoch == 0 else batches(run.epoch), start=1):
            if i <= run.skip:
                continue  # taken before the checkpoint this run resumed from
            run.optimise(step(batch))
            bar.update(1)
            bar.set_postfix(loss=f"{run.running:.4f}", epoch=run.epoch)
            last = run.done >= total
            evaluated = evaluate is not None and (i in eval_at or last)
            if evaluated and evaluate is not None:
                _evaluate(run, evaluate, on_best, set_train, total, desc)
                if config.patience and _stale(run.result.history) >= config.patience:
                    tqdm.write(
                        f"[{desc}] dev has not improved for {config.patience} evaluations: "
                        f"stopping at step {run.done}/{total}"
                    )
                    last, total = True, run.done
            periodic = config.checkpoint_every and run.done % config.checkpoint_every == 0
            if checkpoint is not None and not last and (evaluated or periodic):
                checkpoint.save(run.state(i))
            if last:
                break
        run.skip = 0
        run.epoch += 1
    bar.close()
    if set_train:
        set_train(False)
    if checkpoint is not None:
        checkpoint.remove()
    run.result.steps, run.result.seconds = run.done, run.seconds()
    return run.result


def _stale(history: list[dict[str, float]]) -> int:
    """Evaluations since the best one (0 when the latest is the best)."""
    scores = [h["score"] for h in history]
    return len(scores) - 1 - scores.index(max(scores)) if scores else 0


def _evaluate(
    run: _Run,
    evaluate: Callable[[], float],
    on_best: Callable[[float], None] | None,
    set_train: Callable[[bool], None] | None,
    total: int,
    desc: str,
) -> None:
    """Score in eval mode, record it, and hand a new best to ``on_best``."""
    if set_train:
        set_train(False)
    score = evaluate()
    if set_train:
        set_train(True)
    result = run.result
    result.history.append({"step": run.done, "loss": run.running, "score": score})
    tqdm.write(f"[{desc}] step {run.done}/{total} loss {run.running:.4f} dev {score:.4f}")
    if score > result.best_score:
        result.best_score = score
        if on_best:
            on_best(score)
