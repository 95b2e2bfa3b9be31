"""The ablations docs/method.md names, trained by the same code on the same data and budget.

Budget is counted in layer-epochs (one pass of one transformer layer over the training set), so
a single 2-layer student trains N times as many epochs as each cohort student, and the deep
student (N*m layers) as many epochs as each cohort student.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from shoal.distill.distill import DistillConfig, distill

VARIANTS = {
    "stack": "boosting + virtual stacking (the method's own recipe)",
    "boost": "boosting without stacking",
    "average": "independently distilled students, averaged",
    "single": "one 2-layer student (same budget)",
    "deep": "one student as deep as the whole cohort (DistilBERT-style)",
    "spread": "boosting + stacking, students copy different teacher layers",
    "no-kd": "boosting + stacking without the logit KD term",
}


def variant_config(base: DistillConfig, name: str, out: Path) -> DistillConfig:
    """The run of one named variant, budget-matched to ``base``."""
    n, m, e = base.n_students, base.student_layers, base.train.epochs
    common = {"out": str(out / name), "cache_dir": str(out / "teacher-cache")}
    if name == "stack":
        return replace(base, **common, method="stack")
    if name == "boost":
        return replace(base, **common, method="boost")
    if name == "average":
        return replace(base, **common, method="average")
    if name == "single":
        return replace(base, **common, n_students=1, train=replace(base.train, epochs=e * n))
    if name == "deep":
        return replace(base, **common, n_students=1, student_layers=n * m)
    if name == "spread":
        return replace(base, **common, init="spread")
    if name == "no-kd":
        return replace(base, **common, w_kd=0.0)
    raise KeyError(f"unknown ablation {name!r}; choose from {sorted(VARIANTS)}")


def run_ablations(base: DistillConfig, out: str | Path, variants: list[str]) -> dict:
    """Run each variant (resuming finished ones from their checkpoints) and tabulate."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in variants:
        cfg = variant_config(base, name, root)
        report = distill(cfg)
        best = report["prefix_accuracy"][-1]
        rows.append(
            {
                "variant": name,
                "what": VARIANTS[name],
                "students": cfg.n_students,
                "layers": cfg.student_layers,
                "epochs_per_student": cfg.train.epochs,
                "dev_accuracy": best.get("dev_accuracy"),
                "test_accuracy": best.get("test_accuracy"),
                "test_f1": best.get("test_f1"),
                "prefix": report["prefix_accuracy"],
                "train_seconds": report["train_seconds"]["total"],
            }
        )
        (root / "ablations.json").write_text(
            json.dumps({"base": asdict(base), "rows": rows}, indent=2)
        )
    (root / "ablations.md").write_text(to_markdown(rows))
    return {"rows": rows}


def to_markdown(rows: list[dict]) -> str:
    """A table: variant, shape, dev/test accuracy of the full model, prefixes, time."""
    lines = [
        "| variant | what | students x layers | dev acc | test acc | test acc by k | train s |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        pref = " / ".join(
            f"{100 * p['test_accuracy']:.2f}"
            for p in r["prefix"]
            if p.get("test_accuracy") is not None
        )
        lines.append(
            f"| {r['variant']} | {r['what']} | {r['students']} x {r['layers']} | "
            f"{100 * (r['dev_accuracy'] or 0):.2f} | "
            f"{100 * (r['test_accuracy'] or 0):.2f} | {pref} | "
            f"{r['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"
