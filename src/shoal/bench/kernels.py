"""``shoal bench kernels``: the cohort's execution paths against the teacher, on this machine.

Cases, at batch 1 and at a large batch of SST-2-length inputs (sentences of the median SST-2
length, no padding):
- cohort *fused* (``LocalRunner``, every k; bf16 too where the CPU has native bf16),
- cohort on *ONNX Runtime* (``LocalRunner(backend='onnxruntime')``: a graph per student, every k),
  and the same with int8 students (``dtype='int8'``, dynamic quantization; k = 1 and N),
- cohort *one-by-one* (the reference path: each student in turn, every token in every layer),
- cohort *threaded* (one Python thread per student, 1 intra-op thread each),
- cohort *multi-process* (``WorkerPool``: one single-threaded worker per core, torch and ONNX
  Runtime, vs 1 worker with every core; one student and the full cohort at batch 1),
- the teacher as a user runs it (Hugging Face transformers, PyTorch eager, fp32),
- the teacher on ONNX Runtime (exported with the TorchScript exporter, graph optimisations on),
  float32 and int8 (quantized like the int8 students; they are compared with it).
Latency percentiles exclude warm-up; FLOPs are counted analytically (a multiply-add is 2) and
set against the measured fp32 matrix-multiply peak (best large GEMM). Writes JSON and a PNG.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.models.cohort import ShoalModel
from shoal.models.teacher import input_names
from shoal.provenance import command_line, git_commit
from shoal.serve.runtime import LocalRunner, RuntimeConfig, WorkerPool
from shoal.serve.runtime.allocation import available_cores, workers_for
from shoal.serve.runtime.ort import quantize_int8
from shoal.serve.runtime.profile import cpu_model
from shoal.serve.runtime.runner import bf16_cpu_supported

TARGETS = {"overhead_ratio_max": 1.3, "speedup_vs_hf_min": 2.5, "large_batch_peak_frac_min": 0.5}


@dataclass(frozen=True, kw_only=True)
class KernelsConfig:
    """What ``shoal bench kernels`` measures."""

    out_dir: str = "docs/results"
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
    """Tokens per input; None: the median SST-2 test length (25 with the default tokenizer)."""
    data: str = "../shared/data/sst2/test.tsv"
    """SST-2 sentences (a TSV with a 'sentence' column); synthetic ids when missing."""
    threads: tuple[int, ...] = ()
    """Intra-op thread counts to measure in-process cases at; () means 1 and all cores."""
    multiprocess: bool = True
    onnx: bool = True
    command: str = field(default_factory=command_line)


# ------------------------------------------------------------------------------ FLOPs


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


# ------------------------------------------------------------------------------ timing


def matmul_peak(
    threads: int, dtype: torch.dtype = torch.float32, n: int = 2048, iters: int = 5
) -> float:
    """Best GFLOP/s of an n x n x n GEMM at ``threads`` intra-op threads."""
    with _threads(threads):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = min(_once(lambda: a @ b) for _ in range(iters))
    return 2 * n**3 / best / 1e9


def _once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ inputs


def sst2_batches(
    tokenizer: Any, data: str, length: int | None, large: int
) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor], str]:
    """Batch-1 inputs (distinct sentences) and one large batch, all exactly ``length`` tokens."""
    path = Path(data)
    sents: list[list[int]] = []
    if path.is_file():
        lines = path.read_text().splitlines()
        col = lines[0].split("\t").index("sentence") if "sentence" in lines[0] else 0
        sents = [tokenizer(r.split("\t")[col])["input_ids"] for r in lines[1:] if r.strip()]
    if sents:
        lens = sorted(len(s) for s in sents)
        length = length or lens[len(lens) // 2]
        chosen = [s for s in sents if len(s) == length] or [
            s[:length] for s in sents if len(s) >= length
        ]
        source = f"{path} ({len(chosen)} sentences of {length} tokens)"
    else:
        length = length or 25
        rng = np.random.default_rng(0)
        chosen = [[101, *rng.integers(1000, 20000, length - 2).tolist(), 102] for _ in range(64)]
        source = f"synthetic ({length} tokens; {path} not found)"
    ids = torch.tensor(chosen, dtype=torch.long)

    def pack(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "input_ids": x,
            "attention_mask": torch.ones_like(x),
            "token_type_ids": torch.zeros_like(x),
        }

    rows = [pack(ids[i : i + 1]) for i in range(len(ids))]
    big = pack(ids[torch.arange(large) % len(ids)])
    return rows, big, source


def _args(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return x["input_ids"], x["attention_mask"], x["token_type_ids"]


# ------------------------------------------------------------------------------ systems


def export_onnx(teacher: Any, folder: Path, sample: dict[str, torch.Tensor]) -> Path:
    """The teacher as ONNX with dynamic batch and length (TorchScript exporter)."""
    path = folder / "teacher.onnx"
    names = input_names(teacher)
    axes = {n: {0: "batch", 1: "length"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            teacher,
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def quantize_onnx(path: Path) -> Path:
    """An int8 copy of an ONNX graph, written beside it: the teacher quantized by the same
    function as Shoal's int8 students (``quantize_int8``), so the two compare like for like."""
    out = path.with_suffix(".int8.onnx")
    out.write_bytes(quantize_int8(path.read_bytes()))
    return out


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads busy-wait between runs by default; on a shared host that steals the
    # cores from whatever runs next (the same reason the torch cases run with a short OpenMP
    # spin), so the comparison turns spinning off.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def threaded_runner(
    runner: LocalRunner, k: int, pool: ThreadPoolExecutor
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """One Python thread per student; torch releases the GIL inside each op."""

    def run(x: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = pool.map(lambda i: runner.partial(*_args(x), (i,), k), range(k))
        return runner.finish(sum(parts))

    return run


# ------------------------------------------------------------------------------ the run


@dataclass
class Case:
    """One system at one batch size, timed round-robin with the others of its group."""

    system: str
    batch: int
    k: int | None
    threads: int
    flops: int
    fn: Callable[[dict[str, torch.Tensor]], Any]
    extra: dict[str, Any] = field(default_factory=dict)
    times_ms: list[float] = field(default_factory=list)


def measure(
    cases: list[Case],
    inputs: Callable[[int, int], dict[str, torch.Tensor]],
    iters: int,
    warmup: int,
) -> None:
    """Time the cases round-robin: every round runs each case once on the same input, so a
    load change on a shared machine hits every case alike (ratios stay fair)."""
    for r in range(warmup + iters):
        for c in cases:
            x = inputs(c.batch, r)
            t0 = time.perf_counter()
            c.fn(x)  # returns CPU results: the device is synchronised
            if r >= warmup:
                c.times_ms.append((time.perf_counter() - t0) * 1e3)


def _record(c: Case, length: int) -> dict[str, Any]:
    p = np.percentile(c.times_ms, [50, 90, 99])
    out = {
        "system": c.system,
        "batch": c.batch,
        "length": length,
        "k": c.k,
        "threads": c.threads,
        "flops": c.flops,
        "p50_ms": float(p[0]),
        "p90_ms": float(p[1]),
        "p99_ms": float(p[2]),
        "mean_ms": statistics.fmean(c.times_ms),
        "iters": len(c.times_ms),
        **c.extra,
    }
    out["gflops"] = c.flops / (out["p50_ms"] / 1e3) / 1e9
    print(
        f"  {c.system:<30} b={c.batch:<3} k={c.k!s:<4} t={c.threads} p50 "
        f"{out['p50_ms']:8.2f} ms  {out['gflops']:6.1f} GFLOP/s",
        flush=True,
    )
    return out


def run_kernels(config: KernelsConfig) -> dict[str, Any]:
    """Measure every case; return a JSON-ready dict (cases, peaks, targets, machine)."""
    from shoal.models.teacher import load_teacher

    teacher, tok = load_teacher(config.teacher, 2)
    teacher.eval()
    if config.cohort:
        model = ShoalModel.from_pretrained(config.cohort)
    else:
        model = ShoalModel.from_teacher(teacher, config.n_students, config.student_layers).eval()
    n, ccfg = model.n_students, model.config
    rows, big, source = sst2_batches(tok, config.data, config.length, config.large_batch)
    length = rows[0]["input_ids"].shape[1]
    cores = len(available_cores())
    thread_counts = config.threads or tuple(sorted({1, cores or 1}))
    bf16 = bf16_cpu_supported()
    records: list[dict[str, Any]] = []
    peaks: dict[str, float] = {}
    load_before = os.getloadavg()

    def inputs(batch: int, r: int) -> dict[str, torch.Tensor]:
        return rows[r % len(rows)] if batch == 1 else big

    def run_group(group: list[Case]) -> None:
        for batch, iters, warm in (
            (1, config.iters, config.warmup),
            (config.large_batch, config.large_iters, 1),
        ):
            chosen = [c for c in group if c.batch == batch]
            measure(chosen, inputs, iters, warm)
            records.extend(_record(c, length) for c in chosen)

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        # (case name, graph) of the teacher on ONNX Runtime, float32 and int8
        teacher_graphs: list[tuple[str, Path]] = []
        if config.onnx:
            fp32 = export_onnx(teacher, Path(tmp), rows[0])
            teacher_graphs = [
                ("teacher ONNX Runtime", fp32),
                ("teacher ONNX Runtime int8", quantize_onnx(fp32)),
            ]
        for t in thread_counts:
            with _threads(t):
                peaks[f"fp32_t{t}"] = matmul_peak(t)
                if bf16:
                    peaks[f"bf16_t{t}"] = matmul_peak(t, torch.bfloat16)
                print(
                    f"threads={t}: matmul peak {peaks[f'fp32_t{t}']:.1f} GFLOP/s fp32", flush=True
                )
                group = _in_process_cases(
                    model, teacher, teacher_graphs, t, bf16, length, config.large_batch
                )
                with ThreadPoolExecutor(n) as tp:
                    if t == 1:
                        group += _threaded_cases(model, tp, length, config.large_batch)
                    run_group(group)
        if 1 not in thread_counts:
            with _threads(1), ThreadPoolExecutor(n) as tp:
                run_group(_threaded_cases(model, tp, length, config.large_batch))
        if config.multiprocess:
            folder = config.cohort or str(Path(tmp) / "cohort")
            if not config.cohort:
                model.save_pretrained(folder)
            with contextlib.ExitStack() as stack:
                group = _multiprocess_cases(
                    stack, folder, ccfg, n, length, config.large_batch, cores or 1
                )
                run_group(group)
            for rec in records:
                if " proc x " in rec["system"]:  # time inside the slowest worker, per batch
                    seconds = rec.pop("worker_seconds")[-rec["iters"] :]  # no warm-up
                    rec["worker_compute_ms"] = 1e3 * statistics.median(seconds)
    return {
        **provenance(config),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cores": cores,
            "torch": torch.__version__,
            "bf16_native": bf16,
            "env": {
                k: os.environ.get(k)
                for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
            },
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "inputs": {"source": source, "length": length, "large_batch": config.large_batch},
        **shapes(model, teacher, config.cohort or config.teacher),
        "peaks_gflops": peaks,
        "cases": records,
        "summary": summarize(records, peaks, n, config.large_batch),
    }


def provenance(config: Any) -> dict[str, Any]:
    """The command, the settings and the commit a result came from."""
    return {"command": config.command, "config": asdict(config), "git_commit": git_commit()}


def shapes(model: ShoalModel, teacher: Any, source: str) -> dict[str, dict[str, Any]]:
    """The 'cohort' and 'teacher' entries of a result: what was compared."""
    ccfg, tcfg = model.config, teacher.config
    return {
        "cohort": {
            "n_students": model.n_students,
            "student_layers": ccfg.student_layers,
            "hidden": ccfg.hidden_size,
            "from": source,
        },
        "teacher": {"layers": tcfg.num_hidden_layers, "hidden": tcfg.hidden_size},
    }


def _in_process_cases(
    model: ShoalModel,
    teacher: Any,
    teacher_graphs: list[tuple[str, Path]],
    t: int,
    bf16: bool,
    length: int,
    large: int,
) -> list[Case]:
    n, ccfg, tcfg = model.n_students, model.config, teacher.config
    names = input_names(teacher)
    sessions = [(name, ort_session(path, t)) for name, path in teacher_graphs]
    # (case name, runner, the k it is timed at)
    runners: list[tuple[str, LocalRunner, list[int]]] = [
        ("cohort fused", LocalRunner(model), list(range(1, n + 1)))
    ]
    if bf16:
        runners.append(("cohort fused bf16", LocalRunner(model, dtype="bfloat16"), sorted({1, n})))
    if teacher_graphs:  # ONNX Runtime is on: the cohort runs on it too
        runners.append(
            (
                "cohort ONNX Runtime",
                LocalRunner(model, backend="onnxruntime"),
                list(range(1, n + 1)),
            )
        )
        runners.append(
            (
                "cohort ONNX Runtime int8",
                LocalRunner(model, backend="onnxruntime", dtype="int8"),
                sorted({1, n}),
            )
        )
    cases = []
    for b in (1, large):
        for name, runner, ks in runners:
            cases.extend(
                Case(
                    name,
                    b,
                    k,
                    t,
                    cohort_flops(ccfg, k, b, length),
                    lambda x, k=k, r=runner: r.run(*_args(x), k),
                )
                for k in ks
            )
        cases.append(
            Case(
                "cohort one-by-one",
                b,
                n,
                t,
                cohort_flops(ccfg, n, b, length, fused=False),
                lambda x: model(*_args(x), n).logits,
            )
        )
        cases.append(
            Case(
                "teacher HF eager",
                b,
                None,
                t,
                teacher_flops(tcfg, b, length),
                lambda x: teacher(**{n: x[n] for n in names}).logits,
            )
        )
        cases.extend(
            Case(
                name,
                b,
                None,
                t,
                teacher_flops(tcfg, b, length),
                lambda x, s=session, feeds=[a.name for a in session.get_inputs()]: s.run(
                    None, {n: x[n].numpy() for n in feeds}
                ),
            )
            for name, session in sessions
        )
    return cases


def _threaded_cases(
    model: ShoalModel, tp: ThreadPoolExecutor, length: int, large: int
) -> list[Case]:
    n = model.n_students
    run = threaded_runner(LocalRunner(model), n, tp)
    return [
        Case(
            "cohort threaded",
            b,
            n,
            1,
            cohort_flops(model.config, n, b, length),
            run,
            {"python_threads": n},
        )
        for b in (1, large)
    ]


def _multiprocess_cases(
    stack: contextlib.ExitStack, folder: str, ccfg: Any, n: int, length: int, large: int, cores: int
) -> list[Case]:
    """Worker pools on the same cores: one worker with every core (OpenMP's default spinning,
    and a short spin) against one single-threaded worker per core (students side by side, on
    torch and on ONNX Runtime). At batch 1 each pool runs one student and the full cohort, so
    the time a layout adds per student is measured where the students run in parallel."""
    layouts: list[tuple[int, int, int | None, str]] = [
        (1, cores, None, "torch"),
        (cores, 1, None, "torch"),
        (cores, 1, None, "onnxruntime"),
    ]
    if cores == 1:
        layouts = [(1, 1, None, "torch")]
    elif "GOMP_SPINCOUNT" not in os.environ:
        layouts.insert(1, (1, cores, 1000, "torch"))
    cases = []
    for workers, threads, spin, backend in layouts:
        config = RuntimeConfig(
            workers=workers,
            threads=threads,
            omp_spincount=spin,
            backend=backend,
            health_interval_s=0,
        )
        pool = stack.enter_context(WorkerPool(folder, config))
        name = (
            f"cohort {workers} proc x {threads} thr"
            + (f" spin {spin}" if spin else "")
            + (" ONNX Runtime" if backend == "onnxruntime" else "")
        )
        for b, k in ((1, 1), (1, n), (large, n)):
            seconds: list[float] = []

            def run(
                x: dict[str, torch.Tensor],
                pool: WorkerPool = pool,
                k: int = k,
                seconds: list[float] = seconds,
            ) -> torch.Tensor:
                out = pool.run(*_args(x), k)
                seconds.append(max(pool.last_worker_seconds.values()))
                return out

            extra = {
                "workers": workers,
                "omp_spincount": spin,
                "backend": backend,
                "cores_used": threads * len(workers_for(k, pool.allocation)),
                "worker_seconds": seconds,
            }
            cases.append(Case(name, b, k, threads, cohort_flops(ccfg, k, b, length), run, extra))
    return cases


def _find(
    cases: list[dict[str, Any]],
    system: str,
    batch: int,
    k: int | None = None,
    threads: int | None = None,
) -> dict[str, Any] | None:
    for c in cases:
        if (
            c["system"] == system
            and c["batch"] == batch
            and (k is None or c["k"] == k)
            and (threads is None or c["threads"] == threads)
        ):
            return c
    return None


def _overhead(
    full: dict[str, Any], one: dict[str, Any], peak_full: float, peak_one: float
) -> dict[str, Any]:
    """Batch-1 latency above the compute floor (FLOPs over the matmul peak of the cores the
    case ran on), full cohort against one student, and their ratio."""
    over_full = full["p50_ms"] - 1e3 * full["flops"] / (peak_full * 1e9)
    over_one = one["p50_ms"] - 1e3 * one["flops"] / (peak_one * 1e9)
    return {
        "overhead_ms_full": over_full,
        "overhead_ms_one": over_one,
        "overhead_ratio": over_full / over_one if over_one > 0 else None,
    }


def _family_ratios(
    cases: list[dict[str, Any]],
    system: str,
    prefix: str,
    t: int,
    n: int,
    large: int,
    peak: float | None,
    hf: dict[str, Any] | None,
    ort: dict[str, Any] | None,
) -> dict[str, Any]:
    """One cohort implementation's ratios: overhead above the compute floor (full cohort
    against one student), speedups over both teachers at batch 1, share of the peak at the
    large batch. Keys carry ``prefix``. Without a ``peak`` (int8, whose GEMM peak is not
    measured) only the speedups and the large batch's GFLOP/s."""
    full, one = _find(cases, system, 1, n, t), _find(cases, system, 1, 1, t)
    big = _find(cases, system, large, n, t)
    row: dict[str, Any] = {}
    if full and one and peak:
        row |= _overhead(full, one, peak, peak)
    if full and hf:
        row["speedup_vs_hf_eager"] = hf["p50_ms"] / full["p50_ms"]
    if full and ort:
        row["speedup_vs_onnxruntime"] = ort["p50_ms"] / full["p50_ms"]
    if big:
        row["large_batch_gflops"] = big["gflops"]
        if peak:
            row["large_batch_peak_frac"] = big["gflops"] / peak
    return {prefix + key: value for key, value in row.items()}


def summarize(
    cases: list[dict[str, Any]], peaks: dict[str, float], n: int, large: int
) -> dict[str, Any]:
    """The ratios the issue asks for, per in-process thread count."""
    out: dict[str, Any] = {}
    for key, peak in peaks.items():
        if not key.startswith("fp32_t"):
            continue
        t = int(key.removeprefix("fp32_t"))
        hf = _find(cases, "teacher HF eager", 1, None, t)
        ort = _find(cases, "teacher ONNX Runtime", 1, None, t)
        ort8 = _find(cases, "teacher ONNX Runtime int8", 1, None, t)
        row: dict[str, Any] = {"peak_gflops": peak}
        # (prefix, system, its peak, the ONNX Runtime teacher of the same precision)
        for prefix, system, family_peak, teacher in (
            ("", "cohort fused", peak, ort),
            ("bf16_", "cohort fused bf16", peaks.get(f"bf16_t{t}"), ort),
            ("ort_", "cohort ONNX Runtime", peak, ort),
            ("ort_int8_", "cohort ONNX Runtime int8", None, ort8),  # no int8 peak is measured
        ):
            row |= _family_ratios(cases, system, prefix, t, n, large, family_peak, hf, teacher)
        out[f"threads_{t}"] = row
    procs = [c for c in cases if " proc x " in c["system"]]
    out["multiprocess"] = {
        f"{c['system']} b={c['batch']} k={c['k']}": {
            "p50_ms": c["p50_ms"],
            "worker_compute_ms": c.get("worker_compute_ms"),
            "cores_used": c.get("cores_used"),
        }
        for c in procs
    }
    out["multiprocess_ratios"] = _multiprocess_ratios(procs, cases, peaks, n)
    out["targets"] = TARGETS
    return out


def _multiprocess_ratios(
    procs: list[dict[str, Any]], cases: list[dict[str, Any]], peaks: dict[str, float], n: int
) -> dict[str, Any]:
    """Per worker layout: the overhead ratio, each case's floor on the cores it kept busy (one
    student occupies one worker, the full cohort every worker it is spread over), and the full
    cohort's speedups over the teachers on as many threads as the machine has cores."""
    threads = max((c["threads"] for c in cases if c["system"] == "teacher HF eager"), default=1)
    teachers = {
        key: _find(cases, system, 1, None, threads)
        for key, system in (
            ("speedup_vs_hf_eager", "teacher HF eager"),
            ("speedup_vs_onnxruntime", "teacher ONNX Runtime"),
        )
    }
    out: dict[str, Any] = {}
    for system in dict.fromkeys(c["system"] for c in procs):
        full, one = (_find(procs, system, 1, k) for k in (n, 1))
        if not full or not one:
            continue
        row: dict[str, Any] = {}
        peak_full, peak_one = (peaks.get(f"fp32_t{c.get('cores_used')}") for c in (full, one))
        if peak_full and peak_one:
            row |= _overhead(full, one, peak_full, peak_one)
        for key, teacher in teachers.items():
            if teacher:
                row[key] = teacher["p50_ms"] / full["p50_ms"]
        out[system] = row
    return out


# ------------------------------------------------------------------------------ output


def _label(c: dict[str, Any]) -> str:
    s = c["system"]
    if "threaded" in s:
        return s
    if " proc x " in s:
        return f"{s} k={c['k']}"
    return s + (f" k={c['k']}" if c["k"] else "") + f", {c['threads']} thr"


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Three panels: batch-1 latency by system, latency vs k beside its compute floor, and the
    large batch's achieved GFLOP/s against the matmul peak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases, peaks = result["cases"], result["peaks_gflops"]
    large, n = result["inputs"]["large_batch"], result["cohort"]["n_students"]
    families = sorted({c["system"].split(" k=")[0] for c in cases})
    colour = {f: f"C{i}" for i, f in enumerate(families)}
    fig = Figure(figsize=(17, 6), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for ax, batch, metric in ((ax1, 1, "p50_ms"), (ax3, large, "gflops")):
        shown = [
            c
            for c in cases
            if c["batch"] == batch
            and (c["system"] not in ("cohort fused", "cohort ONNX Runtime") or c["k"] in (1, n))
        ]
        ax.barh(
            range(len(shown)),
            [c[metric] for c in shown],
            color=[colour[c["system"]] for c in shown],
            xerr=[c["p90_ms"] - c["p50_ms"] for c in shown] if metric == "p50_ms" else None,
        )
        ax.set_yticks(range(len(shown)), [_label(c) for c in shown], fontsize=8)
        ax.invert_yaxis()
    ax1.set_xlabel("p50 latency, ms (error bar to p90)")
    ax1.set_title(f"batch 1, {result['inputs']['length']} tokens")
    for i, key in enumerate(k for k in peaks if k.startswith("fp32_t")):
        t, peak = int(key.removeprefix("fp32_t")), peaks[key]
        fused = sorted(
            (
                c
                for c in cases
                if c["system"] == "cohort fused" and c["batch"] == 1 and c["threads"] == t
            ),
            key=lambda c: c["k"],
        )
        ks = [c["k"] for c in fused]
        ax2.plot(ks, [c["p50_ms"] for c in fused], "o-", color=f"C{i}", label=f"fused, {t} thr")
        on_ort = sorted(
            (
                c
                for c in cases
                if c["system"] == "cohort ONNX Runtime" and c["batch"] == 1 and c["threads"] == t
            ),
            key=lambda c: c["k"],
        )
        if on_ort:
            ax2.plot(
                [c["k"] for c in on_ort],
                [c["p50_ms"] for c in on_ort],
                "s:",
                color=f"C{i}",
                label=f"ONNX Runtime, {t} thr",
            )
        ax2.plot(
            ks,
            [1e3 * c["flops"] / (peak * 1e9) for c in fused],
            "--",
            color=f"C{i}",
            label=f"FLOPs / peak, {t} thr",
        )
        ax3.axvline(peak, color=f"C{i}", ls=":", lw=1, label=f"fp32 matmul peak, {t} thr")
        ax3.axvline(peak / 2, color=f"C{i}", ls="--", lw=1, label=f"50% of peak, {t} thr")
        if f"bf16_t{t}" in peaks:
            ax3.axvline(
                peaks[f"bf16_t{t}"],
                color=f"C{i}",
                ls="-.",
                lw=1,
                label=f"bf16 matmul peak, {t} thr",
            )
    layouts = sorted({c["system"] for c in cases if " proc x " in c["system"]})
    for j, system in enumerate(layouts):  # students side by side: flat in k where cores allow
        runs = sorted(
            (c for c in cases if c["system"] == system and c["batch"] == 1), key=lambda c: c["k"]
        )
        ax2.plot(
            [c["k"] for c in runs],
            [c["p50_ms"] for c in runs],
            "^-.",
            color=f"C{j + 4}",
            label=system.removeprefix("cohort ") + " (workers)",
        )
    ax2.set_xlabel("active students k")
    ax2.set_ylabel("ms")
    ax2.set_xticks(range(1, n + 1))
    ax2.set_title("batch 1: cohort latency and its compute floor")
    ax2.legend(fontsize=8)
    ax3.set_xlabel("achieved GFLOP/s at p50")
    ax3.set_title(f"batch {large}, {result['inputs']['length']} tokens")
    ax3.legend(fontsize=7, loc="lower right")
    FigureCanvasAgg(fig).print_png(str(path))


def write(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """kernels.json and kernels.png under ``out_dir``."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / "kernels.json", out / "kernels.png"
    js.write_text(json.dumps(result, indent=1, default=str))
    plot(result, png)
    return js, png


def kernels_command(
    out_dir: str | Path = "docs/results",
    cohort: str | None = None,
    iters: int = 50,
    **overrides: Any,
) -> dict[str, Any]:
    """What ``shoal bench kernels`` runs: measure, then write JSON and PNG to ``out_dir``."""
    config = KernelsConfig(
        out_dir=str(out_dir),
        cohort=cohort,
        iters=iters,
        large_iters=overrides.pop("large_iters", max(3, iters // 10)),
        **overrides,
    )
    result = run_kernels(config)
    js, png = write(result, out_dir)
    print(f"wrote {js} and {png}")
    return result
