"""Tiny random BERT teachers, a tiny word-level tokenizer and synthetic TSV data."""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = [
    "good",
    "great",
    "fine",
    "nice",
    "bad",
    "awful",
    "poor",
    "sad",
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "was",
    "is",
    "very",
    "not",
    "so",
    "and",
    "but",
]
POSITIVE = {"good", "great", "fine", "nice"}


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(folder: Path, extra: int = 0):
    """A word-level BERT tokenizer over WORDS (plus ``extra`` dummy tokens)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIALS + WORDS + [f"extra{i}" for i in range(extra)]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


def make_teacher(folder: Path, *, num_labels: int = 2, layers: int = 2, seed: int = 0):
    """Save a tiny random BertForSequenceClassification (hidden 32) with its tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = make_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def synthetic_rows(n: int, seed: int, pair: bool = False) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
        label = int(
            sum(w in POSITIVE for w in words)
            > sum(w in {"bad", "awful", "poor", "sad"} for w in words)
        )
        if pair:
            other = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
            rows.append((" ".join(words), " ".join(other), label))
        else:
            rows.append((" ".join(words), label))
    return rows


def write_tsv_folder(folder: Path, sizes=(200, 60, 60), pair: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = "sentence1\tsentence2\tlabel" if pair else "sentence\tlabel"
    for i, (split, n) in enumerate(zip(("train", "dev", "test"), sizes)):
        lines = [header] + ["\t".join(map(str, r)) for r in synthetic_rows(n, seed=i, pair=pair)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_distill_config(teacher: Path, data: Path, out: Path, **kw):
    """A ``DistillConfig`` for the tiny teacher: 32 tokens, one epoch at lr 1e-3, batch 32,
    seed 0; keyword arguments set or override the rest."""
    from shoal.distill.distill import DistillConfig
    from shoal.distill.trainer import TrainConfig

    base = dict(
        teacher=str(teacher),
        data=str(data),
        out=str(out),
        max_length=32,
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=32, seed=0),
    )
    return DistillConfig(**{**base, **kw})


def tiny_finetune_config(teacher: Path, data: Path, out: Path, **kw):
    """A ``FinetuneConfig`` for the tiny teacher: 32 tokens, one epoch at lr 1e-3, batch 8,
    one evaluation per epoch; keyword arguments set or override the rest (``train`` whole)."""
    from shoal.distill.finetune import FinetuneConfig
    from shoal.distill.trainer import TrainConfig

    base = dict(
        model=str(teacher),
        data=str(data),
        out=str(out),
        max_length=32,
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=8, evals_per_epoch=1),
    )
    return FinetuneConfig(**{**base, **kw})
