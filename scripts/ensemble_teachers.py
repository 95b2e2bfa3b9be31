"""Score fine-tuned checkpoints one by one and as an ensemble (mean of log-probabilities).

    python scripts/ensemble_teachers.py --data ../shared/data/sst2 --split test --max-length 64 \
        runs/teacher-sst2-ep2 runs/teacher-sst2-seed1 runs/teacher-sst2-s3

Prints one JSON line per checkpoint and one per ensemble of the first 2, 3, ... checkpoints,
in the order given. A question for teacher selection (does an ensemble of fine-tunes beat its
best member?), not something the server runs.

Reproduces the ensembles row of docs/results/teacher.md ("What did not beat the recipe").
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from shoal.data import encode, load_task
from shoal.distill.evaluate import predict_logits, score
from shoal.errors import ShoalError
from shoal.models.teacher import load_teacher, logits_of
from shoal.types import TextDataset


def log_probs(checkpoint: str, data: TextDataset, num_labels: int, max_length: int) -> torch.Tensor:
    """(N, C) log-probabilities of one checkpoint on a split, in the split's order."""
    model, tok = load_teacher(checkpoint, num_labels)
    model.eval()
    enc = encode(tok, data, max_length)
    with torch.inference_mode():
        logits = predict_logits(logits_of(model), enc, pad_id=tok.pad_token_id or 0)
    return torch.log_softmax(logits, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    if len(args.checkpoints) < 2:
        sys.exit("error: give at least two checkpoints to ensemble")
    try:
        task = load_task(args.data)
        if args.split not in task.splits:
            raise ShoalError(
                f"{args.data} has no {args.split!r} split; it has {sorted(task.splits)}"
            )
        data = task.splits[args.split]
        scored = [log_probs(c, data, task.num_labels, args.max_length) for c in args.checkpoints]
    except ShoalError as e:
        sys.exit(f"error: {e}")
    for name, lp in zip(args.checkpoints, scored, strict=True):
        print(json.dumps({"split": args.split, "models": [name], **score(lp, data.labels)}))
    for n in range(2, len(scored) + 1):
        mean = torch.stack(scored[:n]).mean(0)
        row = {"split": args.split, "models": args.checkpoints[:n], **score(mean, data.labels)}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
