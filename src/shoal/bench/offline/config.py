"""What ``shoal bench kernels`` measures, and the ratios it is judged by.

A frozen dataclass so that a result can record exactly the settings it came from
(``provenance`` writes it beside the numbers); the CLI maps its flags onto these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.provenance import command_line

TARGETS = {"overhead_ratio_max": 1.3, "speedup_vs_hf_min": 2.5, "large_batch_peak_frac_min": 0.5}


@dataclass(frozen=True, kw_only=True)
class KernelsConfig:
    """What ``shoal bench kernels`` measures."""

    out_dir: str = "runs/bench/kernels"
    """Where kernels.json and kernels.png go."""
    cohort: str | None = None
    """A cohort folder; None builds one from the teacher (latency does not depend on training)."""
    teacher: str = "default"
    """The teacher to compare against (and to build the cohort from)."""
    n_students: int = 3
    """Students of the built cohort (ignored with ``cohort``)."""
    student_layers: int = 2
    iters: int = 50
    """Timed iterations per case at batch 1."""
    large_iters: int = 5
    """Timed iterations per case at the large batch."""
    warmup: int = 3
    large_batch: int = 64
    length: int | None = None
    """Tokens per input; None: the median length of ``data``'s sentences (25 for SST-2's test
    split with the default tokenizer; 25 for synthetic ids)."""
    data: str = ""
    """A TSV split (a text and a 'label' column, as SST-2's test.tsv) whose sentences are
    the inputs; empty: synthetic ids."""
    threads: tuple[int, ...] = ()
    """Intra-op thread counts to measure in-process cases at; () means 1 and all cores."""
    multiprocess: bool = True
    onnx: bool = True
    command: str = field(default_factory=command_line)
