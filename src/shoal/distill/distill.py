"""The story of a distillation run (``shoal distill``): teacher -> cohort of shallow students.

The pieces live beside it: the settings (``config``), the teacher's cached outputs
(``teacher_outputs``), each student's training and objective (``students``), the running
ensemble and its boosting arithmetic (``ensemble``), the prefix table (``prefix``) and
checkpoints (``resume``). The default method averages independently distilled students;
``method='stack'`` is stacking distillation with a boosting ensemble, as the method describes.

Life of a run: load data and teacher -> run the teacher once over the training set and cache
its final/intermediate hidden states and logits -> for k = 1..N: train student k on the
residual ``T - b_{k-1}`` (its intermediate layer imitating ``b_{k-1}``), compute alpha_k,
update the cached ensemble ``b_k``, evaluate every prefix, checkpoint -> save the cohort.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shoal.data import encode, load_task, with_dev_split
from shoal.devices import resolve_device
from shoal.distill.augment import augment_key, augment_with_teacher, compose, swap_pairs
from shoal.distill.cache import TokenStore
from shoal.distill.config import METHODS, DistillConfig
from shoal.distill.ensemble import Ensemble, add_student, student_outputs
from shoal.distill.prefix import PrefixEvaluator
from shoal.distill.resume import check_same_run, resume, save_checkpoint, truncate, with_config
from shoal.distill.students import train_jointly, train_student
from shoal.distill.teacher_outputs import TeacherCache, cache_teacher, load_teacher_outputs
from shoal.errors import DataError
from shoal.models.cohort import ShoalModel
from shoal.models.layer_plan import layer_plan
from shoal.models.teacher import load_teacher
from shoal.provenance import command_line, git_commit

__all__ = [
    "METHODS",
    "DistillConfig",
    "Ensemble",
    "TeacherCache",
    "add_student",
    "cache_teacher",
    "distill",
    "student_outputs",
]

log = logging.getLogger(__name__)


def distill(config: DistillConfig, *, stop_after: int | None = None) -> dict:
    """Run a distillation; resumes from ``out/checkpoints`` when a previous run stopped.

    A run asked for more students than ``out`` holds extends that cohort: its students are
    kept and the new ones trained (students are seeded by position, so the result is the
    cohort a single run of the larger size gives). Any other setting must match.

    Args:
        stop_after: train at most this many new students, then return (used to test resume).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.out)
    check_same_run(out, config)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "distill_config.json").write_text(json.dumps(asdict(config), indent=2))
    task = with_dev_split(load_task(config.data))
    if "train" not in task.splits:
        raise DataError(f"{config.data} has no train split; distillation needs train.tsv")
    if config.compose and task.is_pair:
        raise DataError(
            f"compose joins single texts, but {config.data} has sentence pairs; "
            "drop --compose (use --augment or --swap-pairs for pair tasks)"
        )
    teacher, tok = load_teacher(config.teacher, task.num_labels)
    # layers the teacher lacks are refused now, not after its outputs are cached
    plan = layer_plan(
        config.init, config.n_students, config.student_layers, teacher.config.num_hidden_layers
    )
    pad = tok.pad_token_id or 0
    train_set = task.splits["train"].subset(config.max_train or len(task.splits["train"]))
    if config.swap_pairs:
        if not task.is_pair:
            raise DataError(
                f"swap_pairs reverses sentence pairs, but {config.data} has single texts; "
                "drop --swap-pairs (it is for pair tasks such as MRPC)"
            )
        train_set = swap_pairs(train_set)
    n_labelled = len(train_set)
    if config.augment:
        train_set = augment_with_teacher(
            train_set, tok, teacher, config.augment, config.augment_p,
            config.augment_candidates, config.train.seed, config.augment_by,
        )  # fmt: skip
        tqdm.write(
            f"augmented {n_labelled:,} training examples to {len(train_set):,} "
            f"(--augment {config.augment}, by {config.augment_by})"
        )
    if config.compose:
        n_before = len(train_set)
        train_set = compose(
            train_set, config.compose * n_labelled, config.train.seed, pool=n_labelled
        )
        tqdm.write(
            f"joined {len(train_set) - n_before:,} pairs of training examples into new texts "
            f"(--compose {config.compose}): {len(train_set):,} in all"
        )
    enc = {"train": encode(tok, train_set, config.max_length)}
    for s in ("dev", "test"):
        if s in task.splits:
            d = task.splits[s]
            enc[s] = encode(tok, d.subset(config.max_eval or len(d)), config.max_length)
    m, n_t = config.student_layers, teacher.config.num_hidden_layers
    depth = max(1, round(n_t * (m - 1) / m)) if m > 1 else n_t
    teacher.to(device)
    t0 = time.perf_counter()
    cache = load_teacher_outputs(
        Path(config.cache_dir) if config.cache_dir else out / "cache",
        teacher,
        enc["train"],
        depth,
        pad,
        augment=augment_key(
            config.augment,
            config.augment_p,
            config.augment_candidates,
            config.train.seed,
            config.augment_by,
        )
        if config.augment
        else None,
        swapped=config.swap_pairs,
        composed=[config.compose, config.train.seed] if config.compose else None,
    )
    teacher_seconds = time.perf_counter() - t0

    torch.manual_seed(config.train.seed)
    model = ShoalModel.from_teacher(
        teacher, config.n_students, m, plan, head_per_student=config.space == "logits"
    )
    changes = {"combine": "mean"} if config.method == "average" else {}
    if config.dropout != model.config.dropout:
        changes["dropout"] = config.dropout
    if changes:
        model = with_config(model, **changes)
    model.to(device)
    del teacher
    shared = [*model.embeddings.parameters()]
    shared += [] if config.space == "logits" else [*model.head.parameters()]
    for p in shared:
        p.requires_grad_(False)  # shared by all students: frozen so cached outputs stay valid
    # Averaged students never read the running ensemble: no (n_tokens, H) store for them.
    ensemble = (
        None
        if config.method == "average"
        else Ensemble(
            TokenStore(enc["train"].lengths(), model.config.hidden_size),
            torch.zeros(len(enc["train"]), model.config.num_labels),
        )
    )
    state = resume(out, model, enc["train"], ensemble, pad)
    table: list[dict] = state["table"]
    seconds: list[float] = state["seconds"]
    evaluator = PrefixEvaluator(model, enc, pad)
    for k in range(state["done"]):
        evaluator.add(k)
    for k in range(state["done"], config.n_students):
        if stop_after is not None and k - state["done"] >= stop_after:
            return {"stopped_after": k, "table": table}
        t1 = time.perf_counter()
        train_student(model, k, enc["train"], cache, ensemble, pad, config, out)
        alpha = add_student(model, k, enc["train"], cache, ensemble, pad, config)
        seconds.append(time.perf_counter() - t1)
        evaluator.add(k)
        table = evaluator.table()
        log.info("student %d: alpha %.4f, prefix table %s", k + 1, alpha, table[-1])
        save_checkpoint(out, model, table, seconds, done=k + 1)
        if config.min_gain is not None and k > 0 and "dev_accuracy" in table[k]:
            gain = table[k]["dev_accuracy"] - table[k - 1]["dev_accuracy"]
            if gain < config.min_gain:
                log.info("student %d gains %.4f < min_gain; keeping %d students", k + 1, gain, k)
                model, table = truncate(model, k).to(device), table[:k]
                break
    joint_seconds = 0.0
    if config.joint_epochs > 0 and not state.get("joint_done"):
        t1 = time.perf_counter()
        train_jointly(model, enc["train"], cache, pad, config, out)
        joint_seconds = time.perf_counter() - t1
        evaluator = PrefixEvaluator(model, enc, pad)
        for k in range(model.n_students):
            evaluator.add(k)
        table = evaluator.table()
        log.info("after joint training: prefix table %s", table)
        save_checkpoint(
            out,
            model,
            table,
            seconds,
            done=model.n_students,
            joint_done=True,
            joint_seconds=joint_seconds,
        )
    joint_seconds = state.get("joint_seconds", joint_seconds)
    model.meta.update(
        {
            "prefix_accuracy": table,
            "command": command_line(),
            "commit": git_commit(),
            "teacher": config.teacher,
            "data": config.data,
            "method": config.method,
            "label_names": task.label_names,
            "max_length": config.max_length,
            "train_seconds": {
                "teacher_cache": round(teacher_seconds, 1),
                "students": [round(s, 1) for s in seconds],
                "joint": round(joint_seconds, 1),
                "total": round(teacher_seconds + sum(seconds) + joint_seconds, 1),
            },
        }
    )
    model.cpu().save_pretrained(out, tok)
    return {"out": str(out), **model.meta}
