"""Average the weights of fine-tuned checkpoints of one architecture (a uniform "model soup").

    python scripts/average_checkpoints.py runs/soup runs/teacher-sst2-ep2 runs/teacher-sst2-ep3
    shoal eval runs/soup --data ../shared/data/sst2 --split dev --max-length 64

The output folder gets the averaged ``model.safetensors`` and the first checkpoint's config and
tokenizer files, so it loads like any Hugging Face checkpoint.

Reproduces the weight-averaging row of docs/results/teacher.md ("What did not beat the recipe").
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def average(folders: list[Path]) -> dict[str, torch.Tensor]:
    """Elementwise mean of the checkpoints' tensors; they must have the same names and shapes."""
    states = []
    for folder in folders:
        weights = folder / "model.safetensors"
        if not weights.is_file():
            sys.exit(f"error: {weights} does not exist; give Hugging Face checkpoint folders")
        states.append(load_file(str(weights)))
    first = states[0]
    first_shapes = {k: tuple(v.shape) for k, v in first.items()}
    for folder, state in zip(folders[1:], states[1:], strict=True):
        if {k: tuple(v.shape) for k, v in state.items()} != first_shapes:
            sys.exit(
                f"error: {folder} does not match {folders[0]} (tensor names or shapes differ); "
                "average fine-tunes of the same model only"
            )
    return {
        k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype).contiguous()
        for k, v in first.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("checkpoints", type=Path, nargs="+")
    args = p.parse_args()
    if len(args.checkpoints) < 2:
        sys.exit("error: give at least two checkpoints to average")
    state = average(args.checkpoints)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = args.checkpoints[0] / name
        if src.is_file():
            shutil.copy(src, args.out / name)
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    print(f"averaged {len(args.checkpoints)} checkpoints into {args.out}")


if __name__ == "__main__":
    main()
