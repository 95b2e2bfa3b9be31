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


def make_teacher(
    folder: Path,
    *,
    num_labels: int = 2,
    layers: int = 2,
    seed: int = 0,
    problem_type: str | None = None,
):
    """Save a tiny random BertForSequenceClassification (hidden 32) with its tokenizer; its
    config's ``problem_type`` when given."""
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
        problem_type=problem_type,
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


NEGATIVE = {"bad", "awful", "poor", "sad"}


def problem_label(words: list[str], problem_type: str) -> str:
    """A synthetic label cell: multi-label ``0,2`` (0: a positive word, 1: a negative word,
    2: 'movie' or 'film'), or a regression value (positive minus negative words, per word)."""
    if problem_type == "multi_label_classification":
        ids = [
            i for i, hit in enumerate((POSITIVE, NEGATIVE, {"movie", "film"})) if hit & set(words)
        ]
        return ",".join(map(str, ids))
    pos, neg = sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)
    return f"{(pos - neg) / len(words):.4f}"


def write_problem_folder(folder: Path, problem_type: str, sizes=(200, 60, 60)) -> Path:
    """train/dev/test TSVs of random word strings labelled by ``problem_label``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(zip(("train", "dev", "test"), sizes)):
        rng = random.Random(i)
        lines = ["sentence\tlabel"]
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
            lines.append(f"{' '.join(words)}\t{problem_label(words, problem_type)}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def tiny_distill_config(teacher: Path, data: Path, out: Path, **kw):
    """A ``DistillConfig`` for the tiny teacher: 32 tokens, one epoch at lr 1e-3, batch 32,
    seed 0, float32 on any CPU; keyword arguments set or override the rest."""
    from shoal.distill.distill import DistillConfig
    from shoal.distill.trainer import TrainConfig

    base = dict(
        teacher=str(teacher),
        data=str(data),
        out=str(out),
        max_length=32,
        precision="fp32",
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=32, seed=0),
    )
    return DistillConfig(**{**base, **kw})


def tiny_finetune_config(teacher: Path, data: Path, out: Path, **kw):
    """A ``FinetuneConfig`` for the tiny teacher: 32 tokens, one epoch at lr 1e-3, batch 8,
    one evaluation per epoch, float32 on any CPU; keyword arguments set or override the rest
    (``train`` whole)."""
    from shoal.distill.finetune import FinetuneConfig
    from shoal.distill.trainer import TrainConfig

    base = dict(
        model=str(teacher),
        data=str(data),
        out=str(out),
        max_length=32,
        precision="fp32",
        train=TrainConfig(epochs=1, lr=1e-3, batch_size=8, evals_per_epoch=1),
    )
    return FinetuneConfig(**{**base, **kw})


FAMILY_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def make_fairseq_tokenizer(folder: Path):
    """A word-level tokenizer in RoBERTa's format (<s> A </s></s> B </s>, pad id 1)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(FAMILY_SPECIALS + WORDS)}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
    )


FAMILY_NAMES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")


def family_config(family: str, vocab: int, *, layers: int, num_labels: int):
    """A tiny random config of one teacher family (hidden 32, 4 heads, no dropout)."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab, num_labels=num_labels)
    if family == "distilbert":
        return AutoConfig.for_model(
            family, dim=32, n_layers=layers, n_heads=4, hidden_dim=37,
            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, pad_token_id=0,
            seq_classif_dropout=0.0, **common,
        )  # fmt: skip
    extra: dict = {}
    if family in ("roberta", "xlm-roberta", "mpnet"):
        extra = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
        if family != "mpnet":
            extra["type_vocab_size"] = 1
    if family == "electra":
        extra = dict(embedding_size=16)
    return AutoConfig.for_model(
        family, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=70, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **extra, **common,
    )  # fmt: skip


def make_family_teacher(
    folder: Path, family: str, *, num_labels: int = 2, layers: int = 3, seed: int = 0
):
    """Save a tiny random ``family`` sequence classifier with a tokenizer of its kind."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    fairseq = family in ("roberta", "xlm-roberta", "mpnet")
    tok = make_fairseq_tokenizer(folder) if fairseq else make_tokenizer(folder)
    config = family_config(family, len(tok), layers=layers, num_labels=num_labels)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():  # a head and LayerNorms far from their init, so a wrong copy shows
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "relative_attention" in name:
                p.add_(torch.randn_like(p) * 0.2)
            elif "classifier" in name or "pooler" in name or "embeddings_project" in name:
                p.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok
