"""The kernels figure: batch-1 latency by system, latency against k beside its compute floor,
and the large batch's achieved GFLOP/s against the matmul peak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.bench.offline.timing import System

_PER_K = (System.COHORT_FUSED, System.COHORT_ORT)  # timed at every k; the bars show 1 and N


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Write the three panels of ``result`` (a ``run_kernels`` dict) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = result["cases"]
    families = sorted({c["system"].split(" k=")[0] for c in cases})
    colour = {f: f"C{i}" for i, f in enumerate(families)}
    fig = Figure(figsize=(17, 6), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    length, large = result["inputs"]["length"], result["inputs"]["large_batch"]
    n = result["cohort"]["n_students"]
    _bars(ax1, cases, colour, 1, "p50_ms", n)
    ax1.set_xlabel("p50 latency, ms (error bar to p90)")
    ax1.set_title(f"batch 1, {length} tokens")
    _bars(ax3, cases, colour, large, "gflops", n)
    ax3.set_xlabel("achieved GFLOP/s at p50")
    ax3.set_title(f"batch {large}, {length} tokens")
    _latency_by_k(ax2, cases, result["peaks_gflops"], n)
    _peaks(ax3, result["peaks_gflops"])
    ax3.legend(fontsize=7, loc="lower right")
    FigureCanvasAgg(fig).print_png(str(path))


def _label(c: dict[str, Any]) -> str:
    s = c["system"]
    if "threaded" in s:
        return s
    if " proc x " in s:
        return f"{s} k={c['k']}"
    return s + (f" k={c['k']}" if c["k"] else "") + f", {c['threads']} thr"


def _bars(
    ax: Any, cases: list[dict[str, Any]], colour: dict[str, str], batch: int, metric: str, n: int
) -> None:
    """One horizontal bar per case at ``batch``: latency (to p90) or GFLOP/s."""
    shown = [
        c for c in cases if c["batch"] == batch and (c["system"] not in _PER_K or c["k"] in (1, n))
    ]
    ax.barh(
        range(len(shown)),
        [c[metric] for c in shown],
        color=[colour[c["system"]] for c in shown],
        xerr=[c["p90_ms"] - c["p50_ms"] for c in shown] if metric == "p50_ms" else None,
    )
    ax.set_yticks(range(len(shown)), [_label(c) for c in shown], fontsize=8)
    ax.invert_yaxis()


def _by_k(cases: list[dict[str, Any]], system: str, threads: int | None = None) -> list[dict]:
    return sorted(
        (
            c
            for c in cases
            if c["system"] == system
            and c["batch"] == 1
            and (threads is None or c["threads"] == threads)
        ),
        key=lambda c: c["k"],
    )


def _latency_by_k(ax: Any, cases: list[dict[str, Any]], peaks: dict[str, float], n: int) -> None:
    """Batch-1 p50 against k for the fused cohort, ONNX Runtime and the worker pools, with
    the fused cohort's FLOPs at the matmul peak as its floor."""
    for i, t in enumerate(_thread_counts(peaks)):
        fused = _by_k(cases, System.COHORT_FUSED, t)
        ks = [c["k"] for c in fused]
        ax.plot(ks, [c["p50_ms"] for c in fused], "o-", color=f"C{i}", label=f"fused, {t} thr")
        on_ort = _by_k(cases, System.COHORT_ORT, t)
        if on_ort:
            ax.plot(
                [c["k"] for c in on_ort],
                [c["p50_ms"] for c in on_ort],
                "s:",
                color=f"C{i}",
                label=f"ONNX Runtime, {t} thr",
            )
        floor = [1e3 * c["flops"] / (peaks[f"fp32_t{t}"] * 1e9) for c in fused]
        ax.plot(ks, floor, "--", color=f"C{i}", label=f"FLOPs / peak, {t} thr")
    layouts = sorted({c["system"] for c in cases if " proc x " in c["system"]})
    for j, system in enumerate(layouts):  # students side by side: flat in k where cores allow
        runs = _by_k(cases, system)
        ax.plot(
            [c["k"] for c in runs],
            [c["p50_ms"] for c in runs],
            "^-.",
            color=f"C{j + 4}",
            label=system.removeprefix("cohort ") + " (workers)",
        )
    ax.set_xlabel("active students k")
    ax.set_ylabel("ms")
    ax.set_xticks(range(1, n + 1))
    ax.set_title("batch 1: cohort latency and its compute floor")
    ax.legend(fontsize=8)


def _thread_counts(peaks: dict[str, float]) -> list[int]:
    return [int(key.removeprefix("fp32_t")) for key in peaks if key.startswith("fp32_t")]


def _peaks(ax: Any, peaks: dict[str, float]) -> None:
    """The fp32 matmul peak (and half of it) and the bf16 peak, per thread count."""
    for i, t in enumerate(_thread_counts(peaks)):
        peak = peaks[f"fp32_t{t}"]
        ax.axvline(peak, color=f"C{i}", ls=":", lw=1, label=f"fp32 matmul peak, {t} thr")
        ax.axvline(peak / 2, color=f"C{i}", ls="--", lw=1, label=f"50% of peak, {t} thr")
        if f"bf16_t{t}" in peaks:
            ax.axvline(
                peaks[f"bf16_t{t}"],
                color=f"C{i}",
                ls="-.",
                lw=1,
                label=f"bf16 matmul peak, {t} thr",
            )
