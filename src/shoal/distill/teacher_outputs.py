"""The teacher's outputs on the training set (final and intermediate hidden states, logits),
computed once per teacher, data and depth, and kept on disk under one key."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from shoal.data import Encoded, iterate
from shoal.devices import model_device, to_device
from shoal.distill.token_store import TokenStore
from shoal.models.teacher import input_names


@dataclass
class TeacherCache:
    """The teacher's outputs on the training set, computed once."""

    final: TokenStore  # (n_tokens, H) last hidden states
    middle: TokenStore  # (n_tokens, H) hidden states at the students' intermediate depth
    logits: torch.Tensor  # (N, C)


@torch.inference_mode()
def cache_teacher(
    teacher: nn.Module,
    enc: Encoded,
    depth: int,
    pad_id: int,
    batch_size: int = 128,
    bf16: bool = False,
) -> TeacherCache:
    """Run the teacher once over a split and keep what distillation needs; with ``bf16`` its
    matmuls run in bfloat16 autocast (the outputs are stored as without it)."""
    hidden = teacher.config.hidden_size
    final = TokenStore(enc.lengths(), hidden, torch.float16)
    middle = TokenStore(enc.lengths(), hidden, torch.float16)
    logits = torch.zeros(len(enc), teacher.config.num_labels)
    teacher.eval()
    dev = model_device(teacher)
    names = input_names(teacher)
    bar = tqdm(total=len(enc), desc="teacher outputs", unit="ex", dynamic_ncols=True)
    for b in iterate(enc, batch_size, shuffle=False, pad_id=pad_id):
        bar.update(len(b["index"]))
        b = to_device(b, dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = teacher(**{n: b[n] for n in names}, output_hidden_states=True)
        idx = b["index"].tolist()
        final.set_(idx, out.hidden_states[-1])
        middle.set_(idx, out.hidden_states[depth])
        logits[b["index"]] = out.logits.float().cpu()
    bar.close()
    return TeacherCache(final, middle, logits)


def load_teacher_outputs(
    folder: Path,
    teacher,
    enc: Encoded,
    depth: int,
    pad: int,
    augment: list | None = None,
    swapped: bool = False,
    composed: list | None = None,
    bf16: bool = False,
) -> TeacherCache:
    """Load the cached teacher outputs, or run the teacher once (in bfloat16 autocast with
    ``bf16``) and save them."""
    key = {
        "n": len(enc),
        "tokens": sum(enc.lengths()),
        "depth": depth,
        "teacher": str(teacher.name_or_path),
    }
    if augment:
        key["augment"] = augment
    if swapped:
        key["swap_pairs"] = True
    if composed:
        key["compose"] = composed
    if bf16:
        key["precision"] = "bf16"
    folder = folder / f"depth{depth}"
    meta = folder / "teacher.json"
    if meta.is_file() and json.loads(meta.read_text()) == key:
        return TeacherCache(
            TokenStore.load(folder, "final"),
            TokenStore.load(folder, "middle"),
            torch.load(folder / "logits.pt"),
        )
    cache = cache_teacher(teacher, enc, depth, pad, bf16=bf16)
    folder.mkdir(parents=True, exist_ok=True)
    cache.final.save(folder, "final")
    cache.middle.save(folder, "middle")
    torch.save(cache.logits, folder / "logits.pt")
    meta.write_text(json.dumps(key))
    return cache
