"""The model card of a cohort folder: ``README.md`` in the Hugging Face model card format.

YAML metadata (``base_model``: the teacher; ``library_name``, ``pipeline_tag``, ``tags``,
``datasets`` and a ``model-index`` holding the prefix table: accuracy and F1 of every prefix k
on dev and test), written by huggingface_hub so the Hub parses it, above prose: what the cohort
is, how to serve, score and prune it, how it was trained, its measured speed-ups and its limits.
``model_card`` builds the text from plain dicts (the cohort's ``config.json`` and
``shoal_meta.json``, the run's ``distill_config.json``); ``write_model_card`` reads what a folder
holds, with the ``kernels.json`` that ``shoal bench kernels --cohort DIR --out DIR`` leaves there.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from shoal.errors import ModelError
from shoal.models.cohort_folder import CONFIG_NAME, read_cohort
from shoal.problems import MULTI, REGRESSION, SINGLE

CARD_NAME = "README.md"
KERNELS_NAME = "kernels.json"
SPLITS = ("dev", "test")
METRICS = {
    SINGLE: ("accuracy", "f1"),
    MULTI: ("micro_f1", "macro_f1", "accuracy"),
    REGRESSION: ("pearson", "spearman"),
}
"""The prefix-table metrics a card shows, by the head's problem type."""
NAMES = {"f1": "F1", "micro_f1": "micro-F1", "macro_f1": "macro-F1", "accuracy": "accuracy"}


def columns(problem_type: str) -> dict[str, str]:
    """Prefix-table keys and their headings for a head's problem type."""
    return {f"{s}_{m}": f"{s} {NAMES.get(m, m)}" for s in SPLITS for m in METRICS[problem_type]}


# the cohort's runtimes, by their key prefix in kernels.json's summary
RUNTIMES = {
    "": "eager fp32",
    "bf16_": "eager bf16",
    "ort_": "ONNX Runtime fp32",
    "ort_int8_": "ONNX Runtime int8",
}

NOT_MEASURED = """\
Not measured. `shoal bench kernels` times the cohort against its teacher into `kernels.json`;
measured into this folder, the card shows it once rewritten:

```bash
shoal bench kernels --cohort {folder} --teacher {teacher} --out {folder}
python scripts/write_model_card.py {folder}
```"""


def eval_results(meta: dict[str, Any], problem_type: str = SINGLE) -> list[EvalResult]:
    """One result per (split, k, metric) of the stored prefix table, values as stored (0-1).
    huggingface_hub groups them into one model-index entry per split; metric names carry k."""
    data = str(meta.get("data", "unknown")).removeprefix("hf:")
    return [
        EvalResult(
            task_type="text-classification",
            dataset_type=data,
            dataset_name=Path(data).name or data,
            dataset_split=split,
            metric_type=metric,
            metric_value=float(row[f"{split}_{metric}"]),
            metric_name=f"{metric} (k={row['k']} student{_s(row['k'])})",
        )
        for row in meta.get("prefix_accuracy", [])
        for split in SPLITS
        for metric in METRICS[problem_type]
        if row.get(f"{split}_{metric}") is not None
    ]


def model_card(
    config: dict[str, Any],
    meta: dict[str, Any],
    distill_config: dict[str, Any] | None = None,
    *,
    name: str,
    folder: str,
    teacher_base: str | None = None,
    kernels: dict[str, Any] | None = None,
) -> str:
    """The card's text: YAML metadata between ``---`` lines, then markdown prose.

    Args:
        config, meta: the cohort's ``config.json`` and ``shoal_meta.json``.
        distill_config: the run's ``distill_config.json`` (fills what an older meta lacks).
        name: the model-index name and the title; folder: the cohort folder commands name.
        teacher_base: what the teacher itself was fine-tuned from, where known.
        kernels: ``shoal bench kernels`` JSON measured on a cohort of this shape.
    """
    run = {**(distill_config or {}), **{k: v for k, v in meta.items() if v is not None}}
    teacher, data, family = str(run.get("teacher")), str(run.get("data")), config.get("family")
    card = ModelCardData(
        base_model=teacher,
        library_name="shoal",
        pipeline_tag="text-classification",
        tags=["shoal", "distillation", "ensemble", *([family] if family else [])],
        datasets=[data],
        model_name=name,
        eval_results=eval_results(run, config.get("problem_type", SINGLE)) or None,
    )
    speed = _speed(kernels, config) or NOT_MEASURED.format(folder=folder, teacher=teacher)
    return f"---\n{card.to_yaml()}\n---\n\n" + _reflow(
        _prose(config, run, name, folder, teacher_base, speed)
    )


def _prose(
    config: dict[str, Any],
    run: dict[str, Any],
    name: str,
    folder: str,
    base: str | None,
    speed: str,
) -> str:
    """The card below its metadata: what, accuracy by k, use, pruning, training, speed, limits."""
    n, m, data = config["n_students"], config["student_layers"], run.get("data")
    teacher = f"`{run.get('teacher')}`" + (f" (fine-tuned from `{base}`)" if base else "")
    combined = "averages" if config.get("combine") == "mean" else "sums, weighted by alpha,"
    labels = ", ".join(map(str, run.get("label_names") or config.get("id2label", {}).values()))
    layers = "".join(
        f"- Student {i + 1} starts from teacher layers {', '.join(map(str, plan))}.\n"
        for i, plan in enumerate(run.get("init_layers") or [])
    )
    if not layers and run.get("init"):
        layers = f"- The students start from the teacher layers of `--init {run['init']}`.\n"
    cols = columns(config.get("problem_type", SINGLE))
    table = "\n".join(_row(row, cols) for row in run.get("prefix_accuracy", []))
    return f"""\
# {name}

A Shoal cohort: {n} student{_s(n)} of {m} transformer layer{_s(m)} (hidden size
{config["hidden_size"]}, {config["num_attention_heads"]} heads) distilled from the teacher
{teacher} on `{data}` with the '{run.get("method")}' method. Prefix k {combined} the first k
students; a server answers with fewer students under load, trading accuracy for latency. The
students share the teacher's embeddings and classification head.

- Labels: {labels}.
{layers}
## Accuracy by k

| k | {" | ".join(cols.values())} |
| --- |{" --- |" * len(cols)}
{table}

## Use it

Serve it (TEI's `/predict`, `/v1/classify`, `/health` and `/metrics`, on 127.0.0.1) and score it
as it is served:

```bash
shoal serve {folder} --port 8000
shoal eval {folder} --data {data} --by-k
```

## Picking k

The server prunes: under load it answers with the first k of the {n} students that the latency
target allows (`--latency-target-ms`), never fewer than `--floor-k`, nor a prefix more than
`--max-accuracy-drop` points below the full cohort in the table above (dev by default,
`--accuracy-split test`). `--no-pruning` always uses every student; a request may ask for at least k
students (`min_k` on `/v1/classify`); `shoal eval {folder} --data {data} --k K` scores one k.

## Training

{_training(run)}

## Speed

{speed}

## Limitations

- Distilled on inputs of at most {run.get("max_length")} tokens; `shoal serve` truncates longer
  inputs to that length by default (`--max-length`; `--no-truncate` refuses them).
- Accuracy is measured on the dev and test splits of `{data}` only.
- A Shoal cohort (`model_type` 'shoal-cohort'): transformers' `AutoModel` does not load it;
  `shoal serve`, `shoal eval` and `ShoalModel.from_pretrained` do.
"""


def _reflow(text: str) -> str:
    """Paragraphs filled to 100 columns; headings, lists, tables and code kept as they are."""
    blocks = text.split("\n\n")
    return "\n\n".join(
        b
        if b.startswith(("#", "-", "|", "```"))
        else textwrap.fill(" ".join(b.split()), 100, break_on_hyphens=False)
        for b in blocks
    )


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _row(row: dict[str, Any], cols: dict[str, str]) -> str:
    """One line of the prefix table, in percent; '-' where a split was not scored."""
    cells = (f"{100 * row[c]:.2f}" if row.get(c) is not None else "-" for c in cols)
    return f"| {row['k']} | " + " | ".join(cells) + " |"


def _training(run: dict[str, Any]) -> str:
    """The data, the exact command, the commit and where the training time went."""
    text = f"Data: `{run.get('data')}`."
    if run.get("command"):
        text += f"\n\n```bash\n{run['command']}\n```"
    if run.get("commit"):
        text += f"\n\nShoal commit `{run['commit']}`."
    if t := run.get("train_seconds"):
        each = ", ".join(f"{s:g} s" for s in t.get("students", []))
        text += (
            f"\n\nTraining took {t.get('total', 0):g} s: the teacher's pass over the training "
            f"set {t.get('teacher_cache', 0):g} s (next to none when its outputs were already "
            f"cached), the students {each}, joint training {t.get('joint', 0):g} s."
        )
    return text


def _speed(kernels: dict[str, Any] | None, config: dict[str, Any]) -> str:
    """The speed-ups ``shoal bench kernels`` measured at batch 1, per runtime and threads."""
    if not kernels:
        return ""
    rows = []
    for key, row in kernels["summary"].items():
        for prefix, runtime in RUNTIMES.items() if key.startswith("threads_") else ():
            hf, ort = (row.get(f"{prefix}speedup_vs_{t}") for t in ("hf_eager", "onnxruntime"))
            if hf is not None:
                threads, ort_cell = key.removeprefix("threads_"), f"{ort:.2f}x" if ort else "-"
                rows.append(f"| {runtime} | {threads} | {hf:.2f}x | {ort_cell} |")
    cohort, teacher = kernels["cohort"], kernels.get("teacher", {})
    return (
        f"Batch 1, {kernels['inputs']['length']} tokens, the full cohort ({config['n_students']} "
        f"student{_s(config['n_students'])}) on "
        f"{kernels['machine'].get('cpu') or 'a CPU'}, measured on a cohort of this shape "
        f"(from `{cohort.get('from')}`; speed does not depend on the trained weights): how many "
        f"times faster it runs than the {teacher.get('layers', '?')}-layer teacher in PyTorch "
        "eager fp32 and in ONNX Runtime (int8 for the int8 row, else fp32)."
        "\n\n| cohort runtime | threads | vs teacher, eager | vs teacher, ONNX Runtime |\n"
        "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\nMeasured with "
        f"`{kernels.get('command', 'shoal bench kernels')}`."
    )


def teacher_base(teacher: str) -> str | None:
    """What a local teacher folder was fine-tuned from: ``shoal finetune``'s ``--model`` in its
    ``shoal_finetune.json``, else its config's ``_name_or_path``; None when unknown."""
    for file, keys in (
        ("shoal_finetune.json", ("config", "model")),
        (CONFIG_NAME, ("_name_or_path",)),
    ):
        try:
            value: Any = json.loads((Path(teacher) / file).read_text())
            for key in keys:
                value = value[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, str) and value and value != teacher:
            return value
    return None


def read_kernels(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """``shoal bench kernels`` JSON at ``path`` (None if absent), refused unless it measured a
    cohort of this one's shape (students, layers, hidden size)."""
    if not path.is_file():
        return None
    try:
        kernels: dict[str, Any] = json.loads(path.read_text())
        shape = tuple(kernels["cohort"][k] for k in ("n_students", "student_layers", "hidden"))
        kernels["summary"], kernels["inputs"]["length"], kernels["machine"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"{path} is not `shoal bench kernels` output ({e!r}); rerun the benchmark into it"
        ) from None
    ours = (config["n_students"], config["student_layers"], config["hidden_size"])
    if shape != ours:
        raise ModelError(
            f"{path} measured a cohort of {' x '.join(map(str, shape))} (students x layers x "
            f"hidden), this one is {' x '.join(map(str, ours))}; rerun `shoal bench kernels` on it"
        )
    return kernels


def write_model_card(
    folder: str | Path,
    config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    distill_config: dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    kernels: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write the card of the cohort in ``folder`` to ``out`` (default ``folder/README.md``).

    The dicts not given are read from the folder (``config.json``, ``shoal_meta.json``, and
    ``distill_config.json`` where present); ``kernels`` defaults to ``folder/kernels.json``.
    Returns the card's path.
    """
    path = Path(folder)
    if config is None or meta is None:
        config, meta = read_cohort(path)
    if distill_config is None and (path / "distill_config.json").is_file():
        distill_config = json.loads((path / "distill_config.json").read_text())
    if kernels is not None and not Path(kernels).is_file():
        raise ModelError(
            f"{kernels} does not exist; pass the kernels.json of `shoal bench kernels`"
        )
    teacher = str(meta.get("teacher") or (distill_config or {}).get("teacher") or "")
    text = model_card(
        config,
        meta,
        distill_config,
        name=name or path.resolve().name,
        folder=str(folder),
        teacher_base=teacher_base(teacher) if teacher else None,
        kernels=read_kernels(Path(kernels or path / KERNELS_NAME), config),
    )
    target = Path(out) if out is not None else path / CARD_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target
