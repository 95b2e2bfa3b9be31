"""How much of the boosting residual the second student explains.

    python scripts/residual_diagnostic.py COHORT_DIR TEACHER_CACHE_DIR DATA [--n 2000]

For the first ``n`` training examples: r = T - alpha_1 * s_1 (T: the teacher's cached final
states), the least-squares step of s_2 onto r, and the fraction of r's energy it removes, over
all real tokens and over the first token only.

Reproduces the residual share quoted in docs/results/distill.md (method ablation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer

from shoal.data import encode, iterate, load_task
from shoal.distill.token_store import TokenStore
from shoal.models.cohort import ShoalModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cohort")
    p.add_argument("cache", help="the teacher-cache folder holding final.safetensors")
    p.add_argument("data")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=64)
    a = p.parse_args()
    model = ShoalModel.from_pretrained(a.cohort).eval()
    tok = AutoTokenizer.from_pretrained(a.cohort)
    train = load_task(a.data).splits["train"]
    enc = encode(
        tok, train.subset(len(TokenStore.load(Path(a.cache), "final").lengths)), a.max_length
    )
    teacher = TokenStore.load(Path(a.cache), "final")
    sums = {"tokens": [0.0, 0.0, 0.0], "first token": [0.0, 0.0, 0.0]}
    seen = 0
    with torch.no_grad():
        for b in iterate(enc, 256, shuffle=False):
            if seen >= a.n:
                break
            idx = b["index"].tolist()
            seen += len(idx)
            x, mask = model.embed(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            s1, s2 = (model.students[i](x, mask)[-1] for i in (0, 1))
            r = teacher.gather(idx) - model.alpha[0] * s1
            real = b["attention_mask"].bool()
            for name, (rr, ss) in {
                "tokens": (r[real], s2[real]),
                "first token": (r[:, 0], s2[:, 0]),
            }.items():
                acc = sums[name]
                acc[0] += float((rr * ss).sum())
                acc[1] += float((ss * ss).sum())
                acc[2] += float((rr * rr).sum())
    for name, (rs, ss, rr) in sums.items():
        step = rs / ss
        print(f"{name}: best step {step:.4f}, residual energy explained {step * rs / rr:.4f}")


if __name__ == "__main__":
    main()
