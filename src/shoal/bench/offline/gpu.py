"""``shoal bench gpu``: the cohort against its teacher on one CUDA device.

The paper's claim is a GPU claim: N shallow students run side by side cost about one
student's depth in latency, not the teacher's. This measures, on the same inputs and in one
round-robin loop (so clock and load changes hit every system alike):

- the teacher in transformers (eager), float32 and bfloat16;
- the cohort, fused (``LocalRunner``: the first k students as one batched computation), for
  every prefix k, float32 and bfloat16;
- the cohort one by one (``ShoalModel.forward``, the reference path), float32, all students.

Every call starts from CPU token ids and ends with CPU logits, as a server's does, so the
host-device copies and the synchronisation are inside the time.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from shoal.bench.offline.flops import cohort_flops, teacher_flops
from shoal.bench.offline.inputs import equal_length_batches, model_args
from shoal.bench.offline.run import provenance, shapes
from shoal.bench.offline.timing import Case, System, measure, record
from shoal.devices import resolve_device
from shoal.errors import ConfigError
from shoal.models.cohort import ShoalModel
from shoal.models.teacher import input_names
from shoal.provenance import command_line
from shoal.serve.runtime import LocalRunner


@dataclass(frozen=True, kw_only=True)
class GpuBenchConfig:
    """What ``shoal bench gpu`` measures."""

    out_dir: str = "runs/bench/gpu"
    """Where gpu.json and gpu.png go."""
    device: str = "cuda"
    """'cuda' or 'cuda:N'."""
    cohort: str | None = None
    """A cohort folder; None builds one from the teacher (latency does not depend on training)."""
    teacher: str = "default"
    n_students: int = 4
    """Students of the built cohort (ignored with ``cohort``)."""
    student_layers: int = 2
    batches: tuple[int, ...] = (1, 8, 32, 128)
    iters: int = 100
    warmup: int = 10
    length: int | None = None
    """Tokens per input; None: the median length of ``data``'s sentences (25 for SST-2's test
    split with the default tokenizer; 25 for synthetic ids)."""
    data: str = ""
    """A TSV split (a text and a 'label' column, as SST-2's test.tsv) whose sentences are
    the inputs; empty: synthetic ids."""
    command: str = field(default_factory=command_line)

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"batches={self.batches} must be one or more sizes >= 1")
        if self.iters < 1 or self.warmup < 0:
            raise ConfigError(f"iters={self.iters} must be >= 1 and warmup={self.warmup} >= 0")


def _teacher_case(teacher: Any, dtype: torch.dtype, batch: int, flops: int) -> Case:
    dev = next(teacher.parameters()).device
    names = input_names(teacher)

    def run(x: dict[str, torch.Tensor]) -> torch.Tensor:
        out = teacher(**{n: x[n].to(dev) for n in names}).logits
        return out.float().cpu()

    name = System.teacher(dtype == torch.bfloat16)
    return Case(name, batch, None, 1, flops, run)


def run_gpu(config: GpuBenchConfig) -> dict[str, Any]:
    """Measure every case; return a JSON-ready dict (cases, summary, machine)."""
    import copy

    from shoal.models.teacher import load_teacher

    dev = resolve_device(config.device)
    if dev.type != "cuda":
        raise ConfigError(
            f"shoal bench gpu measures a CUDA device, not {config.device!r}; "
            "use `shoal bench kernels` for the CPU"
        )
    teacher, tok = load_teacher(config.teacher, 2)
    teacher.eval()
    if config.cohort:
        model = ShoalModel.from_pretrained(config.cohort)
    else:
        model = ShoalModel.from_teacher(teacher, config.n_students, config.student_layers)
    model.eval()
    n, ccfg, tcfg = model.n_students, model.config, teacher.config
    rows, big, source = equal_length_batches(tok, config.data, config.length, max(config.batches))
    length = rows[0]["input_ids"].shape[1]
    bf16 = torch.cuda.is_bf16_supported()
    dtypes = [torch.float32] + ([torch.bfloat16] if bf16 else [])
    teachers = {d: copy.deepcopy(teacher).to(dev, d) for d in dtypes}
    runners = {d: LocalRunner(copy.deepcopy(model), dev, d) for d in dtypes}
    reference = copy.deepcopy(model).to(dev)

    def inputs(batch: int, r: int) -> dict[str, torch.Tensor]:
        if batch == 1:
            return rows[r % len(rows)]
        return {k: v[:batch] for k, v in big.items()}

    records: list[dict[str, Any]] = []
    with torch.inference_mode():
        for b in config.batches:
            t_flops = teacher_flops(tcfg, b, length)
            cases = [_teacher_case(teachers[d], d, b, t_flops) for d in dtypes]
            for d, runner in runners.items():
                for k in range(1, n + 1):
                    cases.append(
                        Case(
                            System.fused(d == torch.bfloat16),
                            b,
                            k,
                            1,
                            cohort_flops(ccfg, k, b, length),
                            lambda x, k=k, runner=runner: runner.run(*model_args(x), k),
                        )
                    )

            def one_by_one(x: dict[str, torch.Tensor]) -> torch.Tensor:
                ids, mask, types = (t.to(dev) for t in model_args(x))
                return reference(ids, mask, types, n).logits.float().cpu()

            flops = cohort_flops(ccfg, n, b, length, fused=False)
            cases.append(Case(System.COHORT_ONE_BY_ONE, b, n, 1, flops, one_by_one))
            measure(cases, inputs, config.iters, config.warmup)
            records.extend(record(c, length) for c in cases)
    return {
        **provenance(config),
        "machine": {
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(dev),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "bf16": bf16,
        },
        "inputs": {"source": source, "length": length, "batches": list(config.batches)},
        **shapes(model, teacher, config.cohort or config.teacher),
        "cases": records,
        "summary": summarize(records, n),
    }


def summarize(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Per batch size and precision: the teacher's p50 over the whole cohort's (fused, k=N)
    and over one student's (k=1), and the one-by-one path over the fused one (float32)."""

    def p50(system: str, batch: int, k: int | None) -> float | None:
        for c in records:
            if c["system"] == system and c["batch"] == batch and c["k"] == k:
                return float(c["p50_ms"])
        return None

    out = []
    for batch in sorted({c["batch"] for c in records}):
        for bf16 in (False, True):
            teacher = p50(System.teacher(bf16), batch, None)
            whole = p50(System.fused(bf16), batch, n)
            one = p50(System.fused(bf16), batch, 1)
            if teacher is None or whole is None or one is None:
                continue
            row = {
                "batch": batch,
                "precision": "bf16" if bf16 else "fp32",
                "teacher_p50_ms": teacher,
                "cohort_p50_ms": whole,
                "speedup_vs_teacher": teacher / whole,
                "cohort_over_one_student": whole / one,
            }
            serial = p50(System.COHORT_ONE_BY_ONE, batch, n)
            if not bf16 and serial is not None:
                row["one_by_one_over_fused"] = serial / whole
            out.append(row)
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """p50 latency against batch size, one line per system (k = N for the cohort)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result["cohort"]["n_students"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    systems = sorted({c["system"] for c in result["cases"]})
    for system in systems:
        pts = sorted(
            (c["batch"], c["p50_ms"])
            for c in result["cases"]
            if c["system"] == system and c["k"] in (None, n)
        )
        label = system + (f" (k={n})" if system.startswith("cohort") else "")
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency (ms)")
    t = result["teacher"]
    ax.set_title(
        f"{result['machine']['gpu']}: {t['layers']}-layer teacher vs {n} x "
        f"{result['cohort']['student_layers']}-layer cohort, {result['inputs']['length']} tokens",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gpu_command(**overrides: Any) -> dict[str, Any]:
    """What ``shoal bench gpu`` runs: measure, then write gpu.json and gpu.png."""
    config = GpuBenchConfig(**overrides)
    result = run_gpu(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / "gpu.json", out / "gpu.png"
    js.write_text(json.dumps(result, indent=1, default=str))
    plot(result, png)
    for row in result["summary"]:
        print(
            f"  batch {row['batch']:>4} {row['precision']}: teacher {row['teacher_p50_ms']:.2f} ms,"
            f" cohort {row['cohort_p50_ms']:.2f} ms ({row['speedup_vs_teacher']:.2f}x faster;"
            f" {row['cohort_over_one_student']:.2f}x one student)",
            flush=True,
        )
    print(f"wrote {js} and {png}")
    return result
