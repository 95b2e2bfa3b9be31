"""How often a cohort's later students change its answer: the share of examples whose
prediction with k students differs from the prediction with the first student alone.

    python scripts/prefix_agreement.py runs/cohort-sst2-v2 ../shared/data/sst2 --max-length 64

Reproduces the share of changed answers quoted in docs/results/distill.md (method ablation).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer

from shoal.data import encode, iterate, load_task, with_dev_split
from shoal.models.cohort import ShoalModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cohort")
    p.add_argument("data")
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    model = ShoalModel.from_pretrained(args.cohort).eval()
    tok = AutoTokenizer.from_pretrained(args.cohort)
    task = with_dev_split(load_task(args.data))
    for split in ("dev", "test"):
        if split not in task.splits:
            continue
        enc = encode(tok, task.splits[split], args.max_length)
        pred = torch.zeros(model.n_students, len(enc), dtype=torch.long)
        for b in iterate(enc, 256, shuffle=False):
            pred[:, b["index"]] = model.prefix_logits(
                b["input_ids"], b["attention_mask"], b["token_type_ids"]
            ).argmax(-1)
        for k in range(2, model.n_students + 1):
            changed = int((pred[k - 1] != pred[0]).sum())
            print(
                f"{split}: k={k} changes {changed} of {len(enc)} answers of k=1 "
                f"({100 * changed / len(enc):.2f}%)"
            )


if __name__ == "__main__":
    main()
