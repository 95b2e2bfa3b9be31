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

from shoal.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimiser and schedule of one training run."""

    epochs: float = 2.0
    """Passes over the training set; fractions stop part-way through the last one."""
    lr: float = 5e-5
    """Peak learning rate of AdamW (linear warm-up, then linear decay to 0)."""
    weight_decay: float = 0.01
    """AdamW weight decay, not applied to biases and LayerNorm weights."""
    warmup: float = 0.06
    """Fraction of the steps spent warming up."""
    batch_size: int = 32
    """Examples per optimiser step."""
    grad_clip: float = 1.0
    """Gradient-norm clip; 0 turns clipping off."""
    evals_per_epoch: int = 1
    """How often to evaluate (and keep the best weights) in one epoch."""
    seed: int = 0
    """Seed of shuffling and initialisation."""
    checkpoint_every: int = 200
    """Steps between resumable checkpoints (when the run has a checkpoint file); 0 turns
    periodic checkpoints off."""

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"epochs={self.epochs} must be > 0")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr} must be in (0, 1); 5e-5 is typical")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup={self.warmup} must be in [0, 1)")
        if self.evals_per_epoch < 1:
            raise ConfigError(f"evals_per_epoch={self.evals_per_epoch} must be >= 1")
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every={self.checkpoint_every} must be >= 0 (0: no checkpoints)"
            )


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
    warm = int(total * config.warmup)
    opt = torch.optim.AdamW(param_groups(named_params, config.weight_decay), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
        ),
    )
    params = [p for _, p in named_params if p.requires_grad]
    eval_at = {
        int(per_epoch * (i + 1) / config.evals_per_epoch) for i in range(config.evals_per_epoch)
    }
    result = TrainResult()
    done, epoch, skip, running, spent = 0, 0, 0, 0.0, 0.0
    if checkpoint is not None and resume and checkpoint.exists():
        state = checkpoint.load()
        with torch.no_grad():
            named = dict(named_params)
            for name, value in state["params"].items():
                named[name].copy_(value)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        done, epoch, skip = state["done"], state["epoch"], state["in_epoch"]
        running, spent = state["running"], state["seconds"]
        result.best_score, result.history = state["best_score"], state["history"]
        tqdm.write(f"[{desc}] resumed from {checkpoint.path} at step {done}/{total}")

    def save_state(in_epoch: int) -> None:
        if checkpoint is None:
            return
        checkpoint.save(
            {
                "params": {n: p.detach().cpu() for n, p in named_params},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": torch.get_rng_state(),
                "done": done,
                "epoch": epoch,
                "in_epoch": in_epoch,
                "running": running,
                "seconds": spent + time.perf_counter() - start,
                "best_score": result.best_score,
                "history": result.history,
            }
        )

    start = time.perf_counter()
    bar = tqdm(total=total, initial=done, desc=desc, unit="step", dynamic_ncols=True)
    while done < total:
        epoch_batches = first if epoch == 0 else batches(epoch)
        if set_train:
            set_train(True)
        for i, batch in enumerate(epoch_batches, start=1):
            if i <= skip:
                continue  # taken before the checkpoint this run resumed from
            loss = step(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {done}; lower --lr (now {config.lr})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            done += 1
            running = 0.98 * running + 0.02 * loss.item() if done > 1 else loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", epoch=epoch)
            last = done >= total
            evaluated = evaluate is not None and (i in eval_at or last)
            if evaluated:
                _evaluate(result, evaluate, on_best, set_train, done, total, running, desc)
            if not last and (
                evaluated or (config.checkpoint_every and done % config.checkpoint_every == 0)
            ):
                save_state(i)
            if last:
                break
        skip = 0
        epoch += 1
    bar.close()
    if set_train:
        set_train(False)
    if checkpoint is not None:
        checkpoint.remove()
    result.steps = done
    result.seconds = spent + time.perf_counter() - start
    return result


def _evaluate(
    result: TrainResult,
    evaluate: Callable[[], float],
    on_best: Callable[[float], None] | None,
    set_train: Callable[[bool], None] | None,
    done: int,
    total: int,
    running: float,
    desc: str,
) -> None:
    if set_train:
        set_train(False)
    score = evaluate()
    if set_train:
        set_train(True)
    result.history.append({"step": done, "loss": running, "score": score})
    tqdm.write(f"[{desc}] step {done}/{total} loss {running:.4f} dev {score:.4f}")
    if score > result.best_score:
        result.best_score = score
        if on_best:
            on_best(score)
