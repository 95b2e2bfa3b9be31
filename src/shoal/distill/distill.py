"""The story of a distillation run (``shoal distill``): teacher -> cohort of shallow students.

The pieces live beside it: the settings (``config``), the teacher's cached outputs
(``teacher_outputs``), each student's training and objective (``students``), the running
ensemble and its boosting arithmetic (``ensemble``), the prefix table (``prefix``) and
checkpoints (``resume``). The default method (``DistillConfig.method``) is 'average': each
student is distilled from the teacher on its own and prefix k averages the first k students,
because that beat boosting in the SST-2 ablations (docs/results/distill.md). 'stack' is
docs/method.md's stacking distillation with a boosting ensemble, 'boost' the same without
stacking.

Life of a run: load data and teacher -> run the teacher once over the training set and cache
its final/intermediate hidden states and logits -> for k = 1..N: train student k (averaged:
on the teacher itself; boosted: on the residual ``T - b_{k-1}``, its intermediate layer
imitating ``b_{k-1}``, then alpha_k and the cached ensemble ``b_k``), score every prefix,
checkpoint -> optionally train all students jointly -> save the cohort.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shoal.data import Encoded, encode, load_task, read_unlabeled, with_dev_split
from shoal.devices import autocast, model_device, resolve_device
from shoal.distill.augment import augment_key, augment_with_teacher, compose, swap_pairs
from shoal.distill.config import METHODS, DistillConfig
from shoal.distill.ensemble import Ensemble, fit_alpha_and_add, student_outputs
from shoal.distill.model_card import write_model_card
from shoal.distill.objectives import OBJECTIVES
from shoal.distill.prefix import PrefixEvaluator
from shoal.distill.resume import check_same_run, resume, save_checkpoint, truncate, with_config
from shoal.distill.students import train_jointly, train_student
from shoal.distill.teacher_outputs import TeacherCache, cache_teacher, load_teacher_outputs
from shoal.distill.token_store import TokenStore
from shoal.errors import ConfigError, DataError
from shoal.models.cohort import ShoalModel
from shoal.models.families import family_of
from shoal.models.layer_plan import layer_plan
from shoal.models.layers import Layer
from shoal.models.teacher import load_teacher, problem_type_of
from shoal.problems import PRIMARY
from shoal.provenance import command_line, git_commit
from shoal.types import Task, TextDataset

__all__ = [
    "METHODS",
    "DistillConfig",
    "Ensemble",
    "TeacherCache",
    "fit_alpha_and_add",
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
    task = _load_task(config)
    teacher, tok = load_teacher(config.teacher, task.num_labels)
    # layers the teacher lacks are refused now, not after its outputs are cached
    plan = layer_plan(
        config.init, config.n_students, config.student_layers, teacher.config.num_hidden_layers
    )
    depth = middle_depth(config, teacher.config.num_hidden_layers)  # before the teacher pass
    pad = tok.pad_token_id or 0
    train_set, n_labelled = _training_set(config, task, tok, teacher)
    enc = _encode(config, task, tok, train_set)
    teacher.to(device)
    t0 = time.perf_counter()
    cache = _teacher_outputs(config, teacher, enc["train"], depth, pad, out)
    teacher_seconds = time.perf_counter() - t0
    if config.cache_only:
        tqdm.write(f"teacher outputs cached in {teacher_seconds:.0f} s (--cache-only)")
        return {"cache_only": True, "teacher_seconds": round(teacher_seconds, 1)}

    torch.manual_seed(config.train.seed)
    model = _cohort(config, teacher, plan).to(device)
    if config.w_rel > 0:
        cache.late_layer = _last_layer(teacher, model).to(device)
    del teacher
    run = _Run(config, out, model, enc, cache, _ensemble(config, model, enc["train"]), pad)
    run.n_labelled = n_labelled
    state = resume(out, model, enc["train"], run.ensemble, pad)
    run.table, run.seconds = state["table"], state["seconds"]
    stopped = _train_students(run, state["done"], stop_after, device)
    if stopped is not None:
        return {"stopped_after": stopped, "table": run.table}
    joint_seconds = 0.0
    if config.joint_epochs > 0 and not state.get("joint_done"):
        joint_seconds = _train_jointly(run)
    joint_seconds = state.get("joint_seconds", joint_seconds)
    return _save(run, task, tok, teacher_seconds, joint_seconds)


@dataclass
class _Run:
    """What the stages of a run share: the cohort so far, the encoded splits, the teacher's
    cached outputs, the running ensemble (None for averaged students), the prefix table and
    each student's training seconds."""

    config: DistillConfig
    out: Path
    model: ShoalModel
    enc: dict[str, Encoded]
    cache: TeacherCache
    ensemble: Ensemble | None
    pad: int
    n_labelled: int = 0  # the training set's labelled examples, before the texts added to it
    table: list[dict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def _load_task(config: DistillConfig) -> Task:
    """The task's splits (dev held out from train when missing), checked against the
    options that need single texts or pairs."""
    task = with_dev_split(load_task(config.data, problem_type=problem_type_of(config.teacher)))
    if "train" not in task.splits:
        raise DataError(f"{config.data} has no train split; distillation needs train.tsv")
    if config.compose and task.is_pair:
        raise DataError(
            f"compose joins single texts, but {config.data} has sentence pairs; "
            "drop --compose (use --augment or --swap-pairs for pair tasks)"
        )
    if config.swap_pairs and not task.is_pair:
        raise DataError(
            f"swap_pairs reverses sentence pairs, but {config.data} has single texts; "
            "drop --swap-pairs (it is for pair tasks such as MRPC)"
        )
    return task


def _training_set(config: DistillConfig, task: Task, tok, teacher) -> tuple[TextDataset, int]:
    """The labelled examples (``--max-train``; both orders with ``--swap-pairs``), then the
    word-replaced copies (``--augment``), the joined texts (``--compose``) and the unlabeled
    texts (``--unlabeled``); with the number of labelled examples, which come first."""
    train_set = task.splits["train"].subset(config.max_train or len(task.splits["train"]))
    if config.swap_pairs:
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
    if config.unlabeled:
        if task.is_pair:
            raise DataError(
                f"--unlabeled adds single texts, but {config.data} has sentence pairs; "
                "drop --unlabeled"
            )
        texts = read_unlabeled(config.unlabeled, sentences=config.unlabeled_sentences)
        # placeholder labels: w_ce is refused with unlabeled texts, the teacher labels them
        train_set = train_set.extended(texts, [train_set.placeholder_label()] * len(texts))
        tqdm.write(f"added {len(texts):,} unlabeled texts: {len(train_set):,} in all")
    return train_set, n_labelled


def _encode(config: DistillConfig, task: Task, tok, train_set: TextDataset) -> dict[str, Encoded]:
    """Every split tokenised; dev and test capped at ``--max-eval``."""
    enc = {"train": encode(tok, train_set, config.max_length)}
    for s in ("dev", "test"):
        if s in task.splits:
            d = task.splits[s]
            enc[s] = encode(tok, d.subset(config.max_eval or len(d)), config.max_length)
    return enc


def _teacher_outputs(
    config: DistillConfig, teacher, enc: Encoded, depth: int, pad: int, out: Path
) -> TeacherCache:
    """The teacher's states (final, and at the students' intermediate ``depth``) and logits
    on the training set, from the cache when a run on the same examples stored them."""
    augment = (
        augment_key(
            config.augment,
            config.augment_p,
            config.augment_candidates,
            config.train.seed,
            config.augment_by,
        )
        if config.augment
        else None
    )
    return load_teacher_outputs(
        Path(config.cache_dir) if config.cache_dir else out / "cache",
        teacher,
        enc,
        depth,
        pad,
        augment=augment,
        swapped=config.swap_pairs,
        composed=[config.compose, config.train.seed] if config.compose else None,
        unlabeled=_unlabeled_key(config),
        bf16=autocast(model_device(teacher), config.precision).enabled,
        late=config.w_rel > 0,
    )


def middle_depth(config: DistillConfig, n_teacher: int) -> int:
    """The teacher depth whose states the students' second-to-last layer imitates."""
    if config.middle_depth > n_teacher:
        raise ConfigError(
            f"middle_depth={config.middle_depth}, but the teacher has {n_teacher} layers; use "
            f"1..{n_teacher} (or 0: in proportion to the students' depth)"
        )
    if config.middle_depth:
        return config.middle_depth
    m = config.student_layers
    return max(1, round(n_teacher * (m - 1) / m)) if m > 1 else n_teacher


def _unlabeled_key(config: DistillConfig) -> list | None:
    """What the cache key records of ``--unlabeled``: the file's name, size and the split."""
    if not config.unlabeled:
        return None
    path = Path(config.unlabeled)
    return [path.name, path.stat().st_size, config.unlabeled_sentences]


def _cohort(config: DistillConfig, teacher, plan: list[list[int]]) -> ShoalModel:
    """The untrained cohort: embeddings, head and every student's layers copied from the
    teacher; the shared embeddings (and head) frozen."""
    model = ShoalModel.from_teacher(
        teacher, config.n_students, config.student_layers, plan,
        head_per_student=config.space == "logits",
    )  # fmt: skip
    combine = OBJECTIVES[config.method].combine
    changes: dict = {"combine": combine} if combine != model.config.combine else {}
    if config.dropout != model.config.dropout:
        changes["dropout"] = config.dropout
    if changes:
        model = with_config(model, **changes)
    shared = [*model.embeddings.parameters()]
    shared += [] if config.space == "logits" else [*model.head.parameters()]
    for p in shared:
        p.requires_grad_(False)  # shared by all students: frozen so cached outputs stay valid
    return model


def _last_layer(teacher, model: ShoalModel) -> Layer:
    """A frozen copy of the teacher's last layer, whose attention relations the students'
    last layers learn (``--w-rel``)."""
    c = model.config
    layer = Layer(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.layer_norm_eps)
    family = family_of(teacher.config.model_type)
    family.copy_layer(family.teacher_layers(teacher)[-1], layer)
    return layer.eval().requires_grad_(False)


def _ensemble(config: DistillConfig, model: ShoalModel, enc: Encoded) -> Ensemble | None:
    """The running ensemble ``b_k`` of a boosting method, in host memory; averaged students
    never read it, so they get no (n_tokens, H) store."""
    if not OBJECTIVES[config.method].boosts:
        return None
    return Ensemble(
        TokenStore(enc.lengths(), model.config.hidden_size),
        torch.zeros(len(enc), model.config.num_labels),
    )


def _train_students(
    run: _Run, done: int, stop_after: int | None, device: torch.device
) -> int | None:
    """Train students ``done``..N-1 in turn, scoring and checkpointing after each; with
    ``min_gain``, drop the student that gains too little and stop. Returns the position it
    stopped at when ``stop_after`` new students were trained first, else None."""
    config, enc, pad = run.config, run.enc, run.pad
    evaluator = PrefixEvaluator(run.model, enc, pad)
    for k in range(done):
        evaluator.add(k)
    for k in range(done, config.n_students):
        if stop_after is not None and k - done >= stop_after:
            return k
        t1 = time.perf_counter()
        train_student(
            run.model, k, enc["train"], run.cache, run.ensemble, pad, config, run.out,
            n_labelled=run.n_labelled,
            evaluate=(lambda k=k: evaluator.dev_score(k)) if "dev" in enc else None,
        )  # fmt: skip
        alpha = fit_alpha_and_add(run.model, k, enc["train"], run.cache, run.ensemble, pad, config)
        run.seconds.append(time.perf_counter() - t1)
        evaluator.add(k)
        run.table = table = evaluator.table()
        log.info("student %d: alpha %.4f, prefix table %s", k + 1, alpha, table[-1])
        save_checkpoint(run.out, run.model, table, run.seconds, done=k + 1)
        dev_metric = f"dev_{evaluator.metric}"
        if config.min_gain is not None and k > 0 and dev_metric in table[k]:
            gain = table[k][dev_metric] - table[k - 1][dev_metric]
            if gain < config.min_gain:
                log.info("student %d gains %.4f < min_gain; keeping %d students", k + 1, gain, k)
                run.model, run.table = truncate(run.model, k).to(device), table[:k]
                break
    return None


def _train_jointly(run: _Run) -> float:
    """All students together on every prefix's loss, then the prefix table again; returns
    the seconds it took."""
    t1 = time.perf_counter()
    train_jointly(run.model, run.enc["train"], run.cache, run.pad, run.config, run.out)
    joint_seconds = time.perf_counter() - t1
    evaluator = PrefixEvaluator(run.model, run.enc, run.pad)
    for k in range(run.model.n_students):
        evaluator.add(k)
    run.table = evaluator.table()
    log.info("after joint training: prefix table %s", run.table)
    save_checkpoint(
        run.out,
        run.model,
        run.table,
        run.seconds,
        done=run.model.n_students,
        joint_done=True,
        joint_seconds=joint_seconds,
    )
    return joint_seconds


def _save(run: _Run, task: Task, tok, teacher_seconds: float, joint_seconds: float) -> dict:
    """Save the cohort on the CPU with its prefix table and provenance, and its model card
    (README.md); return its meta."""
    config, model, seconds = run.config, run.model, run.seconds
    model.meta.update(
        {
            "prefix_accuracy": run.table,
            "command": command_line(),
            "commit": git_commit(),
            "teacher": config.teacher,
            "data": config.data,
            "method": config.method,
            "label_names": task.label_names,
            "metric": PRIMARY[model.config.problem_type],
            "max_length": config.max_length,
            "train_seconds": {
                "teacher_cache": round(teacher_seconds, 1),
                "students": [round(s, 1) for s in seconds],
                "joint": round(joint_seconds, 1),
                "total": round(teacher_seconds + sum(seconds) + joint_seconds, 1),
            },
        }
    )
    model.cpu().save_pretrained(run.out, tok)
    write_model_card(run.out, asdict(model.config), model.meta, asdict(config))
    return {"out": str(run.out), **model.meta}
