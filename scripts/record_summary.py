"""Copy headline numbers from a command's own JSON output into docs/results/summary.json.

    python scripts/record_summary.py teacher mpnet-base/sst2 RUN/shoal_finetune.json
    python scripts/record_summary.py cohort mpnet-base/sst2 runs/cohort-mpnet-sst2
    python scripts/record_summary.py kernels mpnet-base docs/results/kernels-mpnet/kernels.json
    python scripts/record_summary.py serving mpnet-base/sst2 docs/results/bench-mpnet/bench.json
    python scripts/record_summary.py ray ray docs/results/ray/bench.json

Each entry keeps the command and the commit that produced it (from the JSON where it records
them; ``--command`` / ``--commit`` fill them in for outputs that do not). Accuracies are in
points (percent), rounded to two decimals; k runs from 1 to N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

SUMMARY = Path(__file__).resolve().parent.parent / "docs" / "results" / "summary.json"
LINKS = ("serving", "prefix_table", "page")
"""Keys of an entry that name another entry or a file, kept when the entry is recorded again."""


def machine() -> str:
    """This machine, as the results pages name it."""
    import os
    import platform

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import torch

        torch_version = f", torch {torch.__version__}"
    except ImportError:
        torch_version = ""
    return f"{os.cpu_count()} cores, {cpu}{torch_version}"


def points(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


OTHER_METRICS = ("micro_f1", "macro_f1", "pearson", "spearman", "mse")
"""Metrics of multi-label and regression heads (``shoal.problems``), recorded beside accuracy
and F1 where a table has them: the F1s in points, correlations and the MSE as they are."""


def metric_value(name: str, x: float | None) -> float | None:
    if name.endswith("f1"):
        return points(x)
    return None if x is None else round(x, 4)


def teacher_entry(report_path: Path) -> dict[str, Any]:
    raw = json.loads(report_path.read_text())
    report = raw.get("report", raw)
    entry: dict[str, Any] = {
        "test_accuracy": points(report["test"].get("accuracy")),
        "test_f1": points(report["test"].get("f1")),
        "dev_accuracy": points(report["dev"].get("accuracy")) if "dev" in report else None,
        "train_seconds": report.get("train_seconds"),
        "steps": report.get("steps"),
        "command": report.get("command"),
        "commit": report.get("commit"),
    }
    for split in ("test", "dev"):
        for name in OTHER_METRICS:
            if name in report.get(split, {}):
                entry[f"{split}_{name}"] = metric_value(name, report[split][name])
    return entry


def cohort_entry(cohort: Path) -> dict[str, Any]:
    meta = json.loads((cohort / "shoal_meta.json").read_text())
    config = json.loads((cohort / "config.json").read_text())
    table = sorted(meta["prefix_accuracy"], key=lambda row: row["k"])
    entry: dict[str, Any] = {
        "test_accuracy_by_k": [points(row.get("test_accuracy")) for row in table],
        "dev_accuracy_by_k": [points(row.get("dev_accuracy")) for row in table],
        "layers": config["student_layers"],
        "students": config["n_students"],
        "n_students": config["n_students"],
        "hidden_size": config["hidden_size"],
        "train_seconds": meta.get("train_seconds", {}).get("total"),
        "command": meta.get("command"),
        "commit": meta.get("commit"),
    }
    if any("test_f1" in row for row in table):
        entry["test_f1_by_k"] = [points(row.get("test_f1")) for row in table]
    for split in ("test", "dev"):
        for name in OTHER_METRICS:
            if any(f"{split}_{name}" in row for row in table):
                entry[f"{split}_{name}_by_k"] = [
                    metric_value(name, row.get(f"{split}_{name}")) for row in table
                ]
    if "metric" in meta:
        entry["metric"] = meta["metric"]
        entry["problem_type"] = config.get("problem_type", "single_label_classification")
    return {k: v for k, v in entry.items() if v != [None] * len(table) or not table}


def eval_entry(field: str, path: Path) -> dict[str, Any]:
    """``field`` from one ``shoal eval`` JSON: a list by k (``--by-k``) or one accuracy."""
    result = json.loads(path.read_text())
    if "by_k" in result:
        return {f"{field}_by_k": [points(row["accuracy"]) for row in result["by_k"]]}
    return {field: points(result["accuracy"])}


def _p50(cases: list[dict[str, Any]], system: str, batch: int, threads: int) -> float | None:
    found = [
        c["p50_ms"]
        for c in cases
        if c["system"] == system
        and c["batch"] == batch
        and c["threads"] == threads
        and (c["k"] is None or c["k"] == max(x["k"] or 0 for x in cases if x["system"] == system))
    ]
    return found[0] if found else None


def kernels_entry(path: Path) -> dict[str, Any]:
    """Speedups of the full cohort over the teacher at batch 1 and the large batch, on as many
    threads as the machine has cores (the in-process cases), same precision on both sides."""
    result = json.loads(path.read_text())
    cases = result["cases"]
    threads = max(c["threads"] for c in cases if c["system"] == "teacher HF eager")
    large = result["config"]["large_batch"]
    entry: dict[str, Any] = {"threads": threads, "large_batch": large}
    pairs = {
        "teacher_torch": ("cohort fused", "teacher HF eager"),
        "teacher_onnx": ("cohort ONNX Runtime", "teacher ONNX Runtime"),
        "teacher_onnx_int8": ("cohort ONNX Runtime int8", "teacher ONNX Runtime int8"),
    }
    for name, (ours, theirs) in pairs.items():
        for batch, tag in ((1, "b1"), (large, f"b{large}")):
            a, b = _p50(cases, ours, batch, threads), _p50(cases, theirs, batch, threads)
            entry[f"speedup_vs_{name}_{tag}"] = round(b / a, 2) if a and b else None
    entry["command"] = result.get("command")
    entry["commit"] = result.get("git_commit")
    return entry


def _low_p50(systems: dict[str, Any], name: str) -> float | None:
    p50 = (systems.get(name, {}).get("low_load") or {}).get("p50_ms")
    return None if p50 is None else round(p50, 2)


def _sustained(systems: dict[str, Any], name: str) -> float | None:
    return systems.get(name, {}).get("sustained_burst_rate")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def serving_entry(path: Path, system: str = "shoal-onnx-int8") -> dict[str, Any]:
    """Shoal's system against the teacher on transformers and against Infinity, one run."""
    bench = json.loads(path.read_text())
    systems = bench["systems"]
    top, bottom = max(bench["config"]["burst_rates"]), min(bench["config"]["burst_rates"])
    entry: dict[str, Any] = {"system": system, "cohort": bench["config"]["cohort"]}
    ours_p50, ours_rate = _low_p50(systems, system), _sustained(systems, system)
    entry["low_load_p50_ms"] = ours_p50
    entry["sustained_rate_per_s"] = ours_rate
    acc = (systems.get(system, {}).get("low_load") or {}).get("accuracy")
    entry["served_accuracy"] = points(acc)
    for peer, key in (("teacher-torch", "teacher_torch"), ("infinity", "infinity")):
        if peer not in systems:
            continue
        p50, rate = _low_p50(systems, peer), _sustained(systems, peer)
        entry[f"{key}_low_load_p50_ms"] = p50
        entry[f"{key}_sustained_rate_per_s"] = rate
        entry[f"{key}_served_accuracy"] = points(
            (systems[peer].get("low_load") or {}).get("accuracy")
        )
        entry[f"low_load_p50_ratio_vs_{key}"] = _ratio(p50, ours_p50)
        # a peer that sustains no rate of the grid is below its lowest: a lower bound
        entry[f"burst_rate_ratio_vs_{key}"] = _ratio(ours_rate, rate or bottom)
        entry[f"burst_rate_ratio_vs_{key}_is_lower_bound"] = ours_rate == top or not rate
    entry["burst_rate_is_lower_bound"] = entry.get(
        "burst_rate_ratio_vs_teacher_torch_is_lower_bound", ours_rate == top
    )
    entry["commit"] = bench["machine"].get("commit")
    entry["machine"] = bench_machine(bench["machine"])
    return entry


def bench_machine(recorded: dict[str, Any]) -> str:
    """The machine a benchmark recorded in its JSON, as the results pages name it."""
    return f"{recorded.get('cores')} cores, {recorded.get('cpu')}, torch {recorded.get('torch')}"


def ray_entry(path: Path) -> dict[str, Any]:
    """The Ray path against the single-host server, and 2 replicas x 1 thread against 1 x 2."""
    bench = json.loads(path.read_text())
    systems = bench["systems"]
    single, on_ray = _low_p50(systems, "shoal"), _low_p50(systems, "shoal-ray")
    entry: dict[str, Any] = {
        "single_host_low_load_p50_ms": single,
        "ray_low_load_p50_ms": on_ray,
        "added_p50_ms": round(on_ray - single, 2) if single and on_ray else None,
        "sustained_rate_1x2_per_s": _sustained(systems, "shoal-ray"),
        "sustained_rate_2x1_per_s": _sustained(systems, "shoal-ray-2x1"),
        "replicas_throughput_ratio": _ratio(
            _sustained(systems, "shoal-ray-2x1"), _sustained(systems, "shoal-ray")
        ),
    }
    auto = systems.get("shoal-ray-autoscale", {})
    if auto:
        entry["autoscale_replicas_seen"] = auto.get("replicas_seen")
        entry["autoscale_sustained_rate_per_s"] = auto.get("sustained_burst_rate")
    entry["commit"] = bench["machine"].get("commit")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["teacher", "cohort", "kernels", "serving", "ray"])
    parser.add_argument("key", help="e.g. mpnet-base/sst2 (teacher, cohort) or mpnet-base")
    parser.add_argument("source", type=Path, help="the JSON (or cohort folder) to copy from")
    parser.add_argument("--command", help="the command, where the JSON does not record it")
    parser.add_argument("--commit", help="the commit, where the JSON does not record it")
    parser.add_argument("--teacher", help="a cohort's teacher key (default: the cohort's key)")
    parser.add_argument("--page", help="the results page that reports it")
    parser.add_argument(
        "--long", type=Path, help="`shoal eval --min-words 15` JSON (with --by-k for a cohort)"
    )
    parser.add_argument(
        "--imdb", type=Path, help="`shoal eval` JSON on imdb-sample (with --by-k for a cohort)"
    )
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    args = parser.parse_args()
    build = {
        "teacher": teacher_entry,
        "cohort": cohort_entry,
        "kernels": kernels_entry,
        "serving": serving_entry,
        "ray": ray_entry,
    }
    entry = build[args.kind](args.source)
    for field, path in (("long_sentence_accuracy", args.long), ("imdb_accuracy", args.imdb)):
        if path is not None:
            entry.update(eval_entry(field, path))
    for field in ("command", "commit", "page"):
        if getattr(args, field):
            entry[field] = getattr(args, field)
    if args.kind == "cohort":
        entry["teacher"] = args.teacher or args.key
    entry.setdefault("machine", machine())
    summary = json.loads(args.summary.read_text()) if args.summary.is_file() else {}
    if args.kind == "ray":  # one section of its own: ray.added_p50_ms, ...
        section = "ray"
        summary["ray"] = {**summary.get("ray", {}), **entry}
    else:
        section = {
            "teacher": "teachers",
            "cohort": "cohorts",
            "kernels": "kernels",
            "serving": "serving",
        }[args.kind]
        old = summary.setdefault(section, {}).get(args.key, {})
        # links to other entries and pages survive a rerun; measured values never do
        entry.update({k: old[k] for k in LINKS if k in old and k not in entry})
        summary[section][args.key] = entry
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{section}[{args.key!r}] = {json.dumps(entry)}")


if __name__ == "__main__":
    main()
