"""Fine-tune a Hugging Face encoder into a teacher classifier (``shoal finetune``).

The story: load the data and the model; build the training targets (the gold labels, or with
``distill_from`` a fine-tuned teacher's logits, cached, over the examples and any augmented
copies); train with AdamW, scoring dev and saving the best checkpoint; reload that checkpoint
and score it on dev and test. The settings are ``FinetuneConfig`` (``shoal.distill.config``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shoal.data import Encoded, encode, iterate, load_task, long_examples, with_dev_split
from shoal.devices import autocast, resolve_device
from shoal.distill.augment import augment_key, augment_with_teacher
from shoal.distill.config import FinetuneConfig
from shoal.distill.evaluate import predict_logits, score
from shoal.distill.losses import consistency_loss, kd_loss, label_loss
from shoal.distill.trainer import Checkpoint, TrainResult, train
from shoal.errors import ConfigError, DataError
from shoal.files import write_json_atomic
from shoal.models.teacher import load_teacher, logits_of, problem_type_of
from shoal.problems import PRIMARY, SINGLE
from shoal.provenance import command_line, git_commit
from shoal.types import Task

__all__ = ["CHECKPOINT_NAME", "FinetuneConfig", "finetune"]

Batch = dict[str, torch.Tensor]


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune, keep the best dev checkpoint, evaluate it on test; return the report."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    problem_type = (
        problem_type_of(config.model) if config.problem_type == "auto" else config.problem_type
    )
    if config.rdrop and problem_type != SINGLE:
        raise ConfigError(f"rdrop compares two softmaxes; {config.model} is {problem_type}")
    task = with_dev_split(load_task(config.data, problem_type=problem_type))
    if "train" not in task.splits:
        raise DataError(f"{config.data} has no train split; fine-tuning needs train.tsv")
    model, tok = load_teacher(
        config.model, task.num_labels, id2label=dict(enumerate(task.label_names)),
        problem_type=problem_type,
    )  # fmt: skip
    targets = _training_targets(config, task, tok, device)
    evals, select = _eval_sets(config, task, tok)
    pad = tok.pad_token_id or 0
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    model.to(device)
    forward = logits_of(model)
    mixed = autocast(device, config.precision)
    loss = _loss(config, forward, targets, device, problem_type)

    def step(b: Batch) -> torch.Tensor:
        with mixed():
            return loss(b)

    def evaluate() -> float:
        logits = predict_logits(forward, select, pad_id=pad)
        return score(logits, select.labels, problem_type)[PRIMARY[problem_type]]

    def save(_: float) -> None:
        model.save_pretrained(out)
        tok.save_pretrained(out)

    t0 = time.perf_counter()
    result = train(
        list(model.named_parameters()),
        step,
        lambda e: list(
            iterate(
                targets.enc,
                config.train.batch_size,
                shuffle=True,
                seed=config.train.seed + e,
                pad_id=pad,
            )
        ),
        config.train,
        evaluate=evaluate,
        on_best=save,
        set_train=model.train,
        desc="finetune",
        checkpoint=Checkpoint(out / CHECKPOINT_NAME, _fingerprint(config, targets.examples)),
        resume=config.resume,
    )
    report = _report(config, device, targets, result, bf16=mixed.enabled)
    selection = select if config.select_min_words else None
    _score_kept_checkpoint(report, out, device, evals, selection, pad, problem_type)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "shoal_finetune.json").write_text(
        json.dumps({"config": asdict(config), "report": report}, indent=2)
    )
    return report


@dataclass
class _Targets:
    """What the model learns from: the encoded training set (the gold examples first, then
    any augmented copies) and, with ``distill_from``, the teacher's logits on it."""

    enc: Encoded
    examples: int
    n_gold: int
    logits: torch.Tensor | None = None
    source: str | None = None
    """The cache folder the teacher's logits came from or went to."""
    seconds: float = 0.0
    """Time spent getting the teacher's logits."""


def _training_targets(config: FinetuneConfig, task: Task, tok, device: torch.device) -> _Targets:
    """The training examples (``--train-min-words``, ``--max-train``), with ``distill_from``
    the word-replaced copies (``--augment``) and the teacher's logits on all of them."""
    train_set = task.splits["train"]
    if config.train_min_words:
        train_set = long_examples(
            train_set, config.train_min_words, split="training", flag="--train-min-words"
        )
    train_set = train_set.subset(config.max_train or len(train_set))
    n_gold = len(train_set)
    if config.distill_from is None:
        enc = encode(tok, train_set, config.max_length)
        return _Targets(enc=enc, examples=len(train_set), n_gold=n_gold)
    teacher, teacher_tok = load_teacher(
        config.distill_from, task.num_labels, problem_type=task.problem_type
    )
    if teacher_tok.get_vocab() != tok.get_vocab():
        raise ConfigError(
            f"{config.distill_from} and {config.model} tokenise differently; distil into "
            "a model that shares the teacher's tokenizer (e.g. the checkpoint it was "
            "fine-tuned from)"
        )
    if config.augment:
        train_set = augment_with_teacher(
            train_set, tok, teacher, config.augment, config.augment_p,
            config.augment_candidates, config.train.seed,
        )  # fmt: skip
        tqdm.write(
            f"augmented {n_gold:,} training examples to {len(train_set):,} "
            f"(--augment {config.augment})"
        )
    enc = encode(tok, train_set, config.max_length)
    teacher.to(device)
    t0 = time.perf_counter()
    key = {"n": len(enc), "tokens": sum(enc.lengths()), "teacher": str(teacher.name_or_path)}
    if config.augment:
        key["augment"] = augment_key(
            config.augment, config.augment_p, config.augment_candidates, config.train.seed
        )
    cache = Path(config.cache_dir) if config.cache_dir else Path(config.out) / "cache"
    logits, source = _teacher_logits(cache, key, teacher, enc, tok.pad_token_id or 0)
    return _Targets(enc, len(train_set), n_gold, logits, source, time.perf_counter() - t0)


def _eval_sets(config: FinetuneConfig, task: Task, tok) -> tuple[dict[str, Encoded], Encoded]:
    """The encoded dev/test splits, and the examples checkpoints are selected on: dev (test
    when there is none), or its examples of ``--select-min-words`` words or more."""
    evals: dict[str, Encoded] = {}
    for s in ("dev", "test"):
        if s in task.splits:
            d = task.splits[s]
            evals[s] = encode(tok, d.subset(config.max_eval or len(d)), config.max_length)
    dev_name = "dev" if "dev" in task.splits else "test"
    if not config.select_min_words:
        return evals, evals[dev_name]
    long_dev = long_examples(
        task.splits[dev_name], config.select_min_words, split=dev_name, flag="--select-min-words"
    )
    return evals, encode(tok, long_dev.subset(config.max_eval or len(long_dev)), config.max_length)


def _loss(
    config: FinetuneConfig,
    forward: Callable[[Batch], torch.Tensor],
    targets: _Targets,
    device: torch.device,
    problem_type: str = SINGLE,
) -> Callable[[Batch], torch.Tensor]:
    """The loss of one batch: cross-entropy on the gold labels, or with a teacher
    ``w_kd * KD + w_ce * CE`` (CE on the gold examples only); with ``rdrop``, averaged over
    two dropout passes plus ``rdrop`` times their symmetric KL."""

    def objective(logits: torch.Tensor, b: Batch) -> torch.Tensor:
        labels = b["labels"].to(device)
        if targets.logits is None:
            return label_loss(logits, labels, problem_type)
        target = targets.logits[b["index"]].to(device)
        loss = config.w_kd * kd_loss(logits, target, config.temperature, problem_type)
        # augmented copies carry their source's label, not a gold one
        gold = (b["index"] < targets.n_gold).to(device)
        if config.w_ce and bool(gold.any()):
            loss = loss + config.w_ce * label_loss(logits[gold], labels[gold], problem_type)
        return loss

    def loss(b: Batch) -> torch.Tensor:
        if not config.rdrop:
            return objective(forward(b).float(), b)
        # one forward of the batch stacked on itself: two independent dropout masks
        twice = {
            k: torch.cat([b[k], b[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        first, second = forward(twice).float().chunk(2)
        mean = (objective(first, b) + objective(second, b)) / 2
        return mean + config.rdrop * consistency_loss(first, second)

    return loss


def _report(
    config: FinetuneConfig,
    device: torch.device,
    targets: _Targets,
    result: TrainResult,
    *,
    bf16: bool,
) -> dict:
    """The run's report, before the kept checkpoint's scores."""
    return {
        "command": command_line(),
        "commit": git_commit(),
        "model": config.model,
        "data": config.data,
        "device": str(device),
        "train_examples": targets.examples,
        "gold_examples": targets.n_gold,
        "distill_from": config.distill_from,
        "teacher_outputs": targets.source,
        "teacher_seconds": round(targets.seconds, 1),
        "precision": "bf16" if bf16 else "fp32",
        "train_seconds": round(result.seconds, 1),
        "steps": result.steps,
        "total_seconds": None,
        "history": result.history,
    }


def _score_kept_checkpoint(
    report: dict,
    out: Path,
    device: torch.device,
    evals: dict[str, Encoded],
    selection: Encoded | None,
    pad: int,
    problem_type: str = SINGLE,
) -> None:
    """Add the dev/test (and selection) scores of the checkpoint that was kept (the best on
    dev), not of the last step's weights, to ``report``."""
    from transformers import AutoModelForSequenceClassification

    best = AutoModelForSequenceClassification.from_pretrained(out).to(device).eval()
    forward = logits_of(best)
    for s, enc in evals.items():
        report[s] = score(predict_logits(forward, enc, pad_id=pad), enc.labels, problem_type)
    if selection is not None:
        logits = predict_logits(forward, selection, pad_id=pad)
        report["selection"] = {
            "examples": len(selection.labels),
            **score(logits, selection.labels, problem_type),
        }


CHECKPOINT_NAME = "checkpoint.pt"


def _fingerprint(config: FinetuneConfig, examples: int) -> dict:
    """What must match for a checkpoint to continue this run (not where it runs)."""
    settings = asdict(config)
    for key in ("resume", "threads", "device", "out", "cache_dir"):
        settings.pop(key)
    settings["train"].pop("checkpoint_every")
    return {**settings, "train_examples": examples}


@torch.inference_mode()
def _teacher_logits(
    folder: Path, key: dict, teacher: torch.nn.Module, enc: Encoded, pad: int
) -> tuple[torch.Tensor, str]:
    """The teacher's logits on the training set and the cache folder they are kept in.

    Read from a cache whose key matches (this command's ``logits/`` or any ``shoal distill``
    depth folder), or computed once and saved to ``folder/logits``."""
    for meta in sorted(folder.glob("*/teacher.json")):
        try:
            found = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a cache left half-written: not reused, computed again below
        if not isinstance(found, dict):
            continue
        found.pop("depth", None)
        if found == key and (meta.parent / "logits.pt").is_file():
            tqdm.write(f"teacher outputs from {meta.parent}")
            logits: torch.Tensor = torch.load(meta.parent / "logits.pt")
            return logits, str(meta.parent)
    teacher.eval()
    logits = predict_logits(logits_of(teacher), enc, pad_id=pad, desc="teacher outputs")
    own = folder / "logits"
    own.mkdir(parents=True, exist_ok=True)
    torch.save(logits, own / "logits.pt")
    write_json_atomic(own / "teacher.json", key)
    return logits, str(own)
