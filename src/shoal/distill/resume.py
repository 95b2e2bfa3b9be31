"""Checkpoints of a distillation run: after each student (``OUT/checkpoints/latest.pt``) and
every ``checkpoint_every`` steps inside one (``student-k.pt``), the check that a resumed run
has the same settings, and restoring finished students."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from shoal.data import Encoded
from shoal.distill.config import DistillConfig
from shoal.distill.ensemble import Ensemble, accumulate
from shoal.distill.prefix import print_table
from shoal.distill.trainer import Checkpoint
from shoal.errors import ConfigError
from shoal.models.cohort import ShoalModel
from shoal.problems import PRIMARY

log = logging.getLogger(__name__)


def save_checkpoint(
    out: Path, model: ShoalModel, table: list[dict], seconds: list[float], **progress
) -> None:
    """Print the prefix table and save what ``resume`` needs to continue from here."""
    print_table(table, PRIMARY[model.config.problem_type])
    torch.save(
        {"state": model.state_dict(), "table": table, "seconds": seconds, **progress},
        out / "checkpoints" / "latest.pt",
    )


# Settings that may differ when a run resumes or extends one in the same folder (``out``:
# the folder may have been moved).


RESUMABLE = frozenset(
    {"n_students", "min_gain", "threads", "device", "cache_dir", "out", "train.checkpoint_every"}
)


def check_same_run(out: Path, config: DistillConfig) -> None:
    """Refuse to resume a checkpoint in ``out`` that was trained with other settings."""
    saved_cfg = out / "distill_config.json"
    if not (out / "checkpoints" / "latest.pt").is_file() or not saved_cfg.is_file():
        return

    def flat(d: dict) -> dict:  # nested sections (train) as 'train.lr'
        top = {k: v for k, v in d.items() if not isinstance(v, dict)}
        return top | {
            f"{k}.{kk}": vv for k, v in d.items() if isinstance(v, dict) for kk, vv in v.items()
        }

    before = flat(json.loads(saved_cfg.read_text()))
    now = flat(asdict(config))
    defaults = flat(asdict(DistillConfig(teacher=config.teacher)))
    differ = sorted(
        key for key in now if key not in RESUMABLE and before.get(key, defaults[key]) != now[key]
    )
    if differ:
        shown = ", ".join(f"{k}: {before.get(k, defaults[k])!r} -> {now[k]!r}" for k in differ)
        raise ConfigError(
            f"{out} holds a checkpoint trained with other settings ({shown}); resume it "
            "with the same settings, or use a new --out"
        )


def resume(out: Path, model: ShoalModel, enc: Encoded, ensemble: Ensemble | None, pad: int) -> dict:
    """Restore finished students and rebuild the ensemble cache from them (boosting only:
    ``ensemble`` is None for averaged students, which never read it). A checkpoint of a
    smaller cohort fills the first students of ``model``; the rest keep their initial
    weights and are trained next."""
    ckpt = out / "checkpoints" / "latest.pt"
    if not ckpt.is_file():
        return {"done": 0, "table": [], "seconds": []}
    saved = torch.load(ckpt, map_location="cpu")
    done = saved["done"]
    if done > model.n_students:
        raise ConfigError(
            f"{out} already holds {done} trained students; ask for at least {done} "
            f"(not {model.n_students}) to resume or extend it, or use a new --out"
        )
    state = model.state_dict()
    for key, value in saved["state"].items():
        if key == "alpha":
            state[key][:done] = value[:done]
        elif key in state and state[key].shape == value.shape:
            state[key] = value
    model.load_state_dict(state)
    for k in range(saved["done"] if ensemble is not None else 0):
        accumulate(model, k, enc, ensemble, pad, float(model.alpha[k]))
    log.info("resumed after %d students", saved["done"])
    return saved


def step_checkpoint(out: Path, name: str, config: DistillConfig, examples: int) -> Checkpoint:
    """The mid-training checkpoint of one student (or of the joint stage)."""
    settings = asdict(config)
    for key in ("n_students", "threads", "device", "out", "cache_dir", "min_gain"):
        settings.pop(key, None)
    settings["train"].pop("checkpoint_every")
    return Checkpoint(out / "checkpoints" / f"{name}.pt", {**settings, "examples": examples})


def with_config(model: ShoalModel, state: dict | None = None, **changes) -> ShoalModel:
    """A copy of the model with some config fields changed, loading ``state`` (default: the
    model's own weights)."""
    new = ShoalModel(replace(model.config, **changes))
    new.load_state_dict(model.state_dict() if state is None else state)
    new.meta = dict(model.meta)
    return new


def truncate(model: ShoalModel, k: int) -> ShoalModel:
    """Keep the first k students."""
    state = {
        n: v
        for n, v in model.state_dict().items()
        if not n.startswith(("students.", "heads.")) or int(n.split(".")[1]) < k
    }
    state["alpha"] = model.alpha[:k].clone()
    return with_config(model, state, n_students=k)
