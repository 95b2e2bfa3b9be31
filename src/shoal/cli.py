"""The ``shoal`` command: maps flags onto config dataclasses and calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from shoal.errors import ShoalError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Student parallelism for fast BERT-like classifiers.")


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
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(128),
    max_train: int = typer.Option(0, help="Cap on training examples (0: all)."),
    max_eval: int = typer.Option(0, help="Cap on dev/test examples (0: all)."),
    evals_per_epoch: int = typer.Option(2),
    seed: int = typer.Option(0),
    threads: int = typer.Option(0),
) -> None:
    """Fine-tune a teacher classifier; keep the best dev checkpoint."""
    from shoal.distill.finetune import FinetuneConfig
    from shoal.distill.finetune import finetune as run
    from shoal.distill.trainer import TrainConfig

    try:
        cfg = FinetuneConfig(model=model, data=data, out=str(out), max_length=max_length,
                             max_train=max_train or None, max_eval=max_eval or None,
                             threads=threads,
                             train=TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                               evals_per_epoch=evals_per_epoch, seed=seed))
        report = run(cfg)
    except ShoalError as e:
        _fail(e)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))


@app.command("eval")
def evaluate(
    model: str = typer.Argument(..., help="Teacher checkpoint or Shoal cohort folder."),
    data: str = typer.Option(..., help="TSV folder, hf:NAME or 'default'."),
    split: str = typer.Option("test"),
    k: int = typer.Option(0, help="Students to use for a cohort (0: all)."),
    max_length: int = typer.Option(128),
) -> None:
    """Report accuracy (and F1 for binary tasks) of a model on a split."""
    from shoal.evaluation import evaluate_model

    try:
        result = evaluate_model(model, data, split=split, k=k or None, max_length=max_length)
    except ShoalError as e:
        _fail(e)
    typer.echo(json.dumps(result, indent=2))


def main() -> None:  # pragma: no cover
    sys.exit(app())
