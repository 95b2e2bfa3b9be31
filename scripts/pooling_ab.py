"""Fine-tune the same checkpoint with two classification heads and score both.

    python scripts/pooling_ab.py --data ../shared/data/sst2 --max-train 12000 --epochs 1 \
        --lr 8e-5 --max-length 64 --seeds 0 1

'cls' is the standard Hugging Face head (the pooler on the first token, then the linear
classifier); 'mean' feeds the same classifier the mean of the last hidden states over the real
tokens, the pooling a sentence-embedding model such as all-MiniLM-L6-v2 was trained with.
Prints one JSON line per (pooling, seed). A question for teacher recipes (does the pretrained
pooling fine-tune better?), not something the server runs: checkpoints are not saved.

Reproduces the mean-pooled head row of docs/results/teacher.md; its output is
docs/results/teacher_pooling_sst2.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch

from shoal.data import Encoded, encode, iterate, load_task, with_dev_split
from shoal.distill.evaluate import predict_logits, score
from shoal.distill.trainer import TrainConfig, train
from shoal.errors import ShoalError
from shoal.models.teacher import load_teacher, logits_of
from shoal.types import Task

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def mean_pooled(model: torch.nn.Module) -> Forward:
    """``batch -> logits`` reading the masked mean of the last hidden states."""
    if not all(hasattr(model, a) for a in ("base_model", "dropout", "classifier")):
        raise ShoalError(f"{type(model).__name__} has no dropout + classifier head to reuse")

    def forward(b: dict[str, torch.Tensor]) -> torch.Tensor:
        h = model.base_model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
        ).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return model.classifier(model.dropout(pooled))

    return forward


def encode_splits(args: argparse.Namespace) -> tuple[Task, dict[str, Encoded], int]:
    """The task, its train (capped at --max-train), dev and test splits encoded once for every
    run (all runs share the checkpoint's tokenizer), and the padding id."""
    task = with_dev_split(load_task(args.data))
    _, tok = load_teacher(args.model, task.num_labels)
    train_set = task.splits["train"].subset(args.max_train or len(task.splits["train"]))
    enc = {"train": encode(tok, train_set, args.max_length)}
    for split in ("dev", "test"):
        if split in task.splits:
            enc[split] = encode(tok, task.splits[split], args.max_length)
    return task, enc, tok.pad_token_id or 0


def run(
    args: argparse.Namespace, task: Task, enc: dict[str, Encoded], pad: int, pooling: str, seed: int
) -> dict:
    torch.manual_seed(seed)
    model, _ = load_teacher(args.model, task.num_labels)
    forward = logits_of(model) if pooling == "cls" else mean_pooled(model)

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(forward(b), b["labels"])

    config = TrainConfig(lr=args.lr, epochs=args.epochs, seed=seed, batch_size=args.batch_size)
    t0 = time.perf_counter()
    train(
        list(model.named_parameters()),
        step,
        lambda e: list(
            iterate(enc["train"], args.batch_size, shuffle=True, seed=seed + e, pad_id=pad)
        ),
        config,
        set_train=model.train,
        desc=f"{pooling} seed {seed}",
    )
    row: dict = {"pooling": pooling, "seed": seed, "train_examples": len(enc["train"])}
    row["train_seconds"] = round(time.perf_counter() - t0, 1)
    model.eval()
    with torch.inference_mode():
        for split in ("dev", "test"):
            if split in enc:
                logits = predict_logits(forward, enc[split], pad_id=pad)
                row[split] = score(logits, enc[split].labels)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", required=True)
    p.add_argument("--max-train", type=int, default=0, help="0: the whole train split")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=8e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--poolings", nargs="+", default=["cls", "mean"], choices=["cls", "mean"])
    args = p.parse_args()
    try:
        task, enc, pad = encode_splits(args)
        for seed in args.seeds:
            for pooling in args.poolings:
                print(json.dumps(run(args, task, enc, pad, pooling, seed)), flush=True)
    except ShoalError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
