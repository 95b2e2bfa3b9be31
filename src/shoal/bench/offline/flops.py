"""Analytic FLOP counts of the cohort and the teacher (a multiply-add counts as 2).

The benchmark sets a case's measured latency against these counts over the machine's matmul
peak: the gap is the time spent outside the matrix multiplies (dispatch, memory, threads).
"""

from __future__ import annotations

from typing import Any


def layer_flops(batch: int, length: int, hidden: int, inter: int, cls_only: bool = False) -> int:
    """One post-LN BERT layer; ``cls_only`` computes K and V for all tokens, the rest for one."""
    b, n, h, i = batch, length, hidden, inter
    if not cls_only:
        return b * n * (8 * h * h + 4 * h * i) + b * 4 * n * n * h
    return b * n * 4 * h * h + b * (4 * h * h + 4 * h * i) + b * 4 * n * h


def head_flops(batch: int, hidden: int, labels: int) -> int:
    return batch * (2 * hidden * hidden + 2 * hidden * labels)


def cohort_flops(cfg: Any, k: int, batch: int, length: int, fused: bool = True) -> int:
    """FLOPs of the first k students (fused: the last layer on the first token only)."""
    h, i, m = cfg.hidden_size, cfg.intermediate_size, cfg.student_layers
    per = (m - 1) * layer_flops(batch, length, h, i) + layer_flops(batch, length, h, i, fused)
    return k * per + head_flops(batch, h, cfg.num_labels)


def teacher_flops(cfg: Any, batch: int, length: int) -> int:
    ffn = getattr(cfg, "intermediate_size", None) or cfg.hidden_dim  # DistilBERT's name
    per = layer_flops(batch, length, cfg.hidden_size, ffn)
    return cfg.num_hidden_layers * per + head_flops(batch, cfg.hidden_size, cfg.num_labels)
