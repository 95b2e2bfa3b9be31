"""Training one student (or, with ``joint_epochs``, all of them together) on the cached
teacher outputs and the running ensemble, with its method's objective (``objectives``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from shoal.data import Encoded, bucketed_batches, collate, iterate
from shoal.devices import autocast, model_device, to_device
from shoal.distill import losses
from shoal.distill.config import DistillConfig
from shoal.distill.ensemble import Ensemble, initial_scale
from shoal.distill.objectives import OBJECTIVES
from shoal.distill.resume import step_checkpoint
from shoal.distill.teacher_outputs import TeacherCache
from shoal.distill.trainer import train
from shoal.models.cohort import ShoalModel


def train_student(
    model: ShoalModel,
    k: int,
    enc: Encoded,
    cache: TeacherCache,
    ensemble: Ensemble | None,
    pad: int,
    config: DistillConfig,
    out: Path,
    *,
    n_labelled: int = 0,
    evaluate: Callable[[], float] | None = None,
) -> None:
    """Train student k against the residual and the stacking target; others stay frozen.
    ``ensemble`` is None for averaged students (they fit the teacher itself). The training
    state is checkpointed every ``config.train.checkpoint_every`` steps under
    ``out/checkpoints``, and a run of the same command continues from there. With
    ``--student-data shards`` the student trains on the first ``n_labelled`` examples and its
    share of the rest. ``evaluate`` (prefix k's dev accuracy) is scored ``evals_per_epoch``
    times an epoch; the student keeps the weights of its best evaluation."""
    dev = model_device(model)
    proj = _identity_projection(model.config.hidden_size).to(dev)
    model.embeddings.eval()
    torch.manual_seed(config.train.seed + k)
    # Post-LN students emit unit-scale states while later residuals are small: a learned
    # scalar c lets student k fit r_k as c * s_k (alpha_k replaces c once it is trained).
    c = nn.Parameter(torch.tensor(initial_scale(model, k, enc, cache, ensemble, pad), device=dev))
    objective = OBJECTIVES[config.method](model, k, cache, ensemble, config, proj, c)
    objective.head.eval()
    student = model.students[k]
    named = [(f"student.{n}", p) for n, p in student.named_parameters()]
    named += [(f"proj.{n}", p) for n, p in proj.named_parameters()] if objective.stack else []
    named += [("scale", c)] if objective.boosts else []
    if objective.logit_space:
        named += [(f"head.{n}", p) for n, p in objective.head.named_parameters()]
    mixed = autocast(dev, config.precision)

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with mixed():
            return objective(b)

    # on disk, beside the step checkpoints, so a resumed run still ends on its best weights
    best = out / "checkpoints" / f"student-{k + 1}.best.pt"

    def keep_best(_score: float) -> None:
        tmp = best.with_name(best.name + ".tmp")
        torch.save(student.state_dict(), tmp)
        tmp.replace(best)

    rows = student_rows(len(enc), n_labelled, k, config)
    train(
        named,
        step,
        shuffled(enc, config, pad, 1000 * k, rows),
        config.train,
        evaluate=evaluate,
        on_best=keep_best if evaluate is not None else None,
        set_train=student.train,
        desc=f"student {k + 1}/{config.n_students}",
        checkpoint=step_checkpoint(out, f"student-{k + 1}", config, len(enc)),
        resume=True,
    )
    if best.is_file():
        student.load_state_dict(torch.load(best, map_location=dev))
        best.unlink()


def student_rows(n: int, n_labelled: int, k: int, config: DistillConfig) -> list[int] | None:
    """The training rows of student k: all (None), or with ``student_data='shards'`` every
    labelled example and every N-th added text, starting at the k-th."""
    if config.student_data == "all" or config.n_students == 1:
        return None
    return [*range(n_labelled), *range(n_labelled + k % config.n_students, n, config.n_students)]


def _identity_projection(hidden: int) -> nn.Linear:
    """Maps the intermediate state onto ``b_{k-1}`` for the stacking loss; starts as the
    identity and is discarded after training."""
    proj = nn.Linear(hidden, hidden)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(hidden))
        proj.bias.zero_()
    return proj


def shuffled(
    enc: Encoded, config: DistillConfig, pad: int, offset: int, rows: list[int] | None = None
):
    """``batches(epoch)`` for the trainer: a fresh seeded shuffle per epoch, of ``rows`` only
    when given."""
    size, seed = config.train.batch_size, config.train.seed + offset
    if rows is None:
        return lambda e: list(iterate(enc, size, shuffle=True, seed=seed + e, pad_id=pad))
    lengths = enc.lengths()
    sub = [lengths[i] for i in rows]

    def batches(e: int) -> list[dict[str, torch.Tensor]]:
        order = bucketed_batches(sub, size, shuffle=True, seed=seed + e)
        return [collate(enc, [rows[j] for j in b], pad) for b in order]

    return batches


def train_jointly(
    model: ShoalModel,
    enc: Encoded,
    cache: TeacherCache,
    pad: int,
    config: DistillConfig,
    out: Path,
) -> None:
    """Train every student at once on the mean over k of prefix k's loss.

    Prefix k's loss is the boosting loss of ``b_k`` against the teacher's states (or logits,
    with a head per student) plus the KD / label terms through the head; alphas, embeddings
    and the shared head stay fixed, so each prefix remains the model the server runs.
    """
    n = model.n_students
    logit_space = model.config.head_per_student
    model.embeddings.eval()
    for head in model.heads if logit_space else [model.head]:
        head.eval()  # no dropout on the states the prefixes are scored on
    weights = [model.weights(k).detach().clone() for k in range(1, n + 1)]
    dev = model_device(model)
    mixed = autocast(dev, config.precision)

    def prefix_losses(b: dict[str, torch.Tensor]) -> torch.Tensor:
        b = to_device(b, dev)
        idx, mask = b["index"].tolist(), b["attention_mask"]
        with torch.no_grad():
            x, amask = model.embed(b["input_ids"], mask, b["token_type_ids"])
        outs = [model.students[i](x, amask)[-1] for i in range(n)]
        t_logits = cache.logits[b["index"]].to(dev)
        teacher_states = None if logit_space else cache.final.gather(idx, device=dev)
        own = [model.heads[i](o[:, 0]) for i, o in enumerate(outs)] if logit_space else []
        loss = torch.zeros((), device=dev)
        for k in range(1, n + 1):
            w = weights[k - 1]
            if logit_space:
                logits = sum(w[i] * own[i] for i in range(k))
                assert isinstance(logits, torch.Tensor)
                term = config.w_res * losses.residual_loss(
                    logits[:, None], t_logits[:, None], mask[:, :1]
                )
            else:
                b_k = sum(w[i] * outs[i] for i in range(k))
                assert isinstance(b_k, torch.Tensor) and teacher_states is not None
                term = config.w_res * losses.residual_loss(b_k, teacher_states, mask)
                logits = model.head(b_k[:, 0])
            if config.w_kd > 0:
                term = term + config.w_kd * losses.kd_loss(
                    logits, t_logits, config.temperature, model.config.problem_type
                )
            if config.w_ce > 0:
                term = term + config.w_ce * losses.label_loss(
                    logits, b["labels"], model.config.problem_type
                )
            loss = loss + term / n
        return loss

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with mixed():
            return prefix_losses(b)

    named = [(f"students.{n_}", p) for n_, p in model.students.named_parameters()]
    if logit_space:
        named += [(f"heads.{n_}", p) for n_, p in model.heads.named_parameters()]
    train(
        named,
        step,
        shuffled(enc, config, pad, 7919),
        replace(config.train, epochs=config.joint_epochs, lr=config.joint_lr or config.train.lr),
        set_train=model.students.train,
        desc="joint",
        checkpoint=step_checkpoint(out, "joint", config, len(enc)),
        resume=True,
    )
