"""Score the averaged cohort made of the students of two cohorts, taken in turn.

    python scripts/mix_cohorts.py runs/cohort-sst2-skip-lr3e4 runs/cohort-sst2-skip-lr3e4-t2 \
        --data ../shared/data/sst2 --split test --max-length 64 --students 4

Both cohorts must be averaged cohorts (`shoal distill --method average`, the default) from the
same teacher: their frozen embeddings and head are then the same tensors. The mixed cohort
takes student 1 of the first, student 1 of the second, student 2 of the first, and so on, up to
``--students``, and prints one JSON line per prefix k. A question for distillation (do
students trained with other settings add more to an average than more of the same?), not
something `shoal distill` or the server needs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch
from transformers import AutoTokenizer

from shoal.data import encode, load_task, with_dev_split
from shoal.distill.evaluate import predict_logits, score
from shoal.errors import ShoalError
from shoal.models.cohort import ShoalModel


def mixed(first: ShoalModel, second: ShoalModel, n: int) -> ShoalModel:
    """An averaged cohort of the students of ``first`` and ``second`` in turn, ``n`` of them."""
    for model in (first, second):
        if model.config.combine != "mean" or model.config.head_per_student:
            raise ShoalError(
                "mix averaged cohorts with one shared head (shoal distill --method average "
                "--space hidden) only"
            )
    for name in ("embeddings", "head"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            raise ShoalError(
                f"the two cohorts have different {name}: mix cohorts distilled from one teacher"
            )
    turns = [
        (model, i)
        for i in range(max(first.n_students, second.n_students))
        for model in (first, second)
        if i < model.n_students
    ]
    if not 1 <= n <= len(turns):
        raise ShoalError(f"--students {n}: the two cohorts hold {len(turns)} students in all")
    out = ShoalModel(replace(first.config, n_students=n)).eval()
    out.embeddings.load_state_dict(first.embeddings.state_dict())
    out.head.load_state_dict(first.head.state_dict())
    for j, (model, i) in enumerate(turns[:n]):
        out.students[j].load_state_dict(model.students[i].state_dict())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--students", type=int, default=4)
    args = p.parse_args()
    try:
        model = mixed(
            ShoalModel.from_pretrained(args.first),
            ShoalModel.from_pretrained(args.second),
            args.students,
        )
        task = with_dev_split(load_task(args.data))
        if args.split not in task.splits:
            raise ShoalError(f"{args.data} has no {args.split!r} split")
        tok = AutoTokenizer.from_pretrained(args.first)
        enc = encode(tok, task.splits[args.split], args.max_length)
    except ShoalError as e:
        sys.exit(f"error: {e}")
    for k in range(1, args.students + 1):
        logits = predict_logits(
            lambda b, k=k: (
                model(b["input_ids"], b["attention_mask"], b["token_type_ids"], k=k).logits
            ),
            enc,
        )
        print(json.dumps({"k": k, "split": args.split, **score(logits, enc.labels)}))


if __name__ == "__main__":
    main()
