"""Run several `shoal finetune` recipes side by side and pick one by dev accuracy.

Each recipe is one `shoal finetune` process (they share the device: small models leave a
GPU mostly idle, so several run at once). The reports go to one JSONL file, one line per
run, and the table printed at the end is sorted by dev accuracy: the selection rule is the
one `shoal finetune` uses inside a run, so test plays no part in choosing.

    python scripts/teacher_sweep.py --data ../shared/data/sst2 --out runs/sweep \
        --parallel 5 --common "--max-length 64 --evals-per-epoch 4 --device cuda" \
        "lr8e-5-s0=--epochs 2 --lr 8e-5 --seed 0" "lr5e-5-s0=--epochs 2 --lr 5e-5 --seed 0"

Each positional argument is NAME=FLAGS; the run writes its checkpoint to OUT/NAME.

Reproduces the eight-recipe SST-2 sweep of docs/results/teacher.md; every run's command is in
docs/results/teacher_sweep_sst2_h100.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """'NAME=FLAGS' -> (NAME, [flags])."""
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(f"recipe {text!r} must be NAME=FLAGS, e.g. 'lr5e-5=--lr 5e-5'")
    return name, shlex.split(flags)


def run_one(name: str, flags: list[str], args: argparse.Namespace) -> dict:
    out = Path(args.out) / name
    cmd = [
        *shlex.split(args.shoal),
        "finetune",
        "--model",
        args.model,
        "--data",
        args.data,
        "--out",
        str(out),
        *shlex.split(args.common),
        *flags,
    ]
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    row = {"name": name, "command": shlex.join(cmd), "exit": code}
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report_file = out / "shoal_finetune.json"
    if code == 0 and report_file.is_file():
        report = json.loads(report_file.read_text())["report"]
        row |= {k: report.get(k) for k in ("device", "train_seconds", "steps", "dev", "test")}
        row["history"] = report.get("history")
    print(f"[{name}] exit {code} after {row['wall_seconds']} s", flush=True)
    return row


def table(rows: list[dict]) -> str:
    done = [r for r in rows if r.get("dev")]
    done.sort(key=lambda r: -r["dev"]["accuracy"])
    lines = ["| run | dev | test | test F1 | train s |", "|---|---:|---:|---:|---:|"]
    for r in done:
        f1 = r["test"].get("f1")
        lines.append(
            f"| {r['name']} | {100 * r['dev']['accuracy']:.2f} | "
            f"{100 * r['test']['accuracy']:.2f} | {'' if f1 is None else f'{100 * f1:.2f}'} | "
            f"{r['train_seconds']} |"
        )
    failed = [r["name"] for r in rows if not r.get("dev")]
    if failed:
        lines.append(f"\nfailed: {', '.join(failed)} (see OUT/NAME/sweep.log)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="+", help="NAME=FLAGS, one per run")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="OUT/NAME per run, OUT/sweep.jsonl for all")
    p.add_argument("--model", default="default")
    p.add_argument("--common", default="", help="flags every run gets")
    p.add_argument("--parallel", type=int, default=1, help="runs at once")
    p.add_argument(
        "--shoal", default=f"{sys.executable} -m shoal", help="how to call the shoal command"
    )
    args = p.parse_args(argv)
    recipes = [parse_recipe(r) for r in args.recipes]
    names = [n for n, _ in recipes]
    if len(set(names)) != len(names):
        raise SystemExit(f"recipe names must be unique: {names}")
    if args.parallel < 1:
        raise SystemExit("--parallel must be >= 1")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = Path(args.out) / "sweep.jsonl"
    results.write_text("")
    lock = threading.Lock()

    def run_and_record(recipe: tuple[str, list[str]]) -> dict:
        row = run_one(*recipe, args)
        with lock, results.open("a") as f:  # a line per finished run: nothing lost if stopped
            f.write(json.dumps(row) + "\n")
        return row

    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(run_and_record, recipes))
    print(table(rows))
    best = max((r for r in rows if r.get("dev")), key=lambda r: r["dev"]["accuracy"], default=None)
    if best:
        print(
            f"selected by dev: {best['name']} (dev {100 * best['dev']['accuracy']:.2f}, "
            f"test {100 * best['test']['accuracy']:.2f})"
        )
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
