"""Turn load-generator records into numbers, plots (PNG) and a markdown report.

Definitions used throughout:
- *answered*: HTTP 200 with a parsable answer; latencies and accuracy are over these only.
- *rejected*: HTTP 429 (the server shed the request); *timed out*: no answer within the
  client's deadline; *errors*: any other status or a broken answer.
- *throughput*: answered per second, over the window from the start of the run to the later
  of the end of the sending window and the last answer; *goodput*: the same, counting only
  answers within the latency target.
- *padding ratio*: padding tokens / (padding + real tokens) computed by the server during
  the run, from the ``shoal_padded_tokens_total`` and ``shoal_real_tokens_total`` counters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shoal.bench.records import MetricSample, Record

LoadPoint = tuple[float, float, float]  # (offered req/s, p50 ms, p99 ms)


def summarize(
    records: Sequence[Record],
    latency_target_s: float,
    *,
    timeline: Sequence[MetricSample] = (),
    duration_s: float | None = None,
) -> dict[str, Any]:
    """Headline numbers of one run (None where there is nothing to measure).

    Args:
        records: one per request.
        latency_target_s: the latency objective that goodput counts against.
        timeline: ``/metrics`` samples, for padding ratio, mean k and queue depth.
        duration_s: the sending window; default the last send offset.

    Returns:
        A JSON-ready dict; latencies in ms, rates in requests per second.
    """
    n = len(records)
    ok = [r for r in records if r.answered]
    statuses = Counter(str(r.status) for r in records)
    rejected = statuses.get("429", 0)
    timed_out = statuses.get("timeout", 0)
    last_offset = max((r.offset_s for r in records), default=0.0)
    sending = duration_s if duration_s is not None else last_offset
    window = max([sending] + [r.end_s for r in ok])
    lat_ms = np.array([r.latency_s * 1e3 for r in ok])
    within = int(np.sum(lat_ms <= latency_target_s * 1e3)) if ok else 0
    p50, p95, p99 = np.percentile(lat_ms, [50, 95, 99]).tolist() if ok else (None,) * 3
    return {
        "requests": n,
        "answered": len(ok),
        "rejected": rejected,
        "timed_out": timed_out,
        "errors": n - len(ok) - rejected - timed_out,
        "status_counts": dict(sorted(statuses.items())),
        "offered_rate_rps": n / sending if sending > 0 else None,
        "throughput_rps": len(ok) / window if window > 0 else None,
        "goodput_rps": within / window if window > 0 else None,
        "latency_target_ms": latency_target_s * 1e3,
        "slo_attainment": within / n if n else None,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "mean_ms": float(lat_ms.mean()) if ok else None,
        "max_ms": float(lat_ms.max()) if ok else None,
        # An answer whose label could not be mapped to a class counts as wrong.
        "accuracy": sum(r.predicted == r.gold for r in ok) / len(ok) if ok else None,
        "mean_students_used": _mean(r.students_used for r in ok),
        "mean_queue_ms": _mean(r.queue_ms for r in ok),
        "mean_inference_ms": _mean(r.inference_ms for r in ok),
        "padding_ratio": padding_ratio(timeline),
        "mean_active_students": _mean(s.active_students for s in timeline),
        "max_cost_scale": max(
            (float(s.cost_scale) for s in timeline if s.cost_scale is not None), default=None
        ),
        "max_queue_depth": max(
            (float(s.queue_depth) for s in timeline if s.queue_depth is not None), default=None
        ),
    }


def padding_ratio(timeline: Sequence[MetricSample]) -> float | None:
    """Share of computed token positions that were padding during the run (counter deltas).

    ``shoal_padded_tokens_total`` counts every computed position (batch x padded length) and
    ``shoal_real_tokens_total`` the real tokens among them.
    """
    both = [s for s in timeline if s.padded_tokens is not None and s.real_tokens is not None]
    if len(both) < 2:
        return None
    pad = float(both[-1].padded_tokens) - float(both[0].padded_tokens)  # type: ignore[arg-type]
    real = float(both[-1].real_tokens) - float(both[0].real_tokens)  # type: ignore[arg-type]
    return (pad - real) / pad if pad > 0 else None


def load_point(summary: Mapping[str, Any]) -> LoadPoint:
    """The (offered rate, p50, p99) of one run, for ``plot_latency_vs_load``."""
    return (summary["offered_rate_rps"], summary["p50_ms"], summary["p99_ms"])


def write_json(obj: Any, path: str | Path) -> Path:
    """Write dataclasses, dicts, lists and paths as indented JSON; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- plots


def plot_latency_cdf(
    runs: Mapping[str, Sequence[Record]], path: str | Path, latency_target_s: float | None = None
) -> Path:
    """Empirical CDF of answered latencies, one line per system (log x)."""
    fig, ax = _figure()
    for name, records in runs.items():
        lat = np.sort([r.latency_s * 1e3 for r in records if r.answered])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", label=name)
    if latency_target_s is not None:
        ax.axvline(latency_target_s * 1e3, color="grey", ls=":", label="target")
    ax.set(
        xscale="log",
        xlabel="latency (ms)",
        ylabel="fraction of answered requests",
        ylim=(0, 1.01),
        title="Latency CDF",
    )
    return _save(fig, ax, path)


def plot_latency_vs_load(
    points: Mapping[str, Sequence[LoadPoint]],
    path: str | Path,
    latency_target_s: float | None = None,
) -> Path:
    """p50 (solid) and p99 (dashed) latency against offered load, per system."""
    fig, ax = _figure()
    for name, pts in points.items():
        pts = sorted(p for p in pts if None not in p)
        if not pts:
            continue
        rate, p50, p99 = zip(*pts, strict=True)
        (line,) = ax.plot(rate, p50, "o-", label=f"{name} p50")
        ax.plot(rate, p99, "s--", color=line.get_color(), label=f"{name} p99")
    if latency_target_s is not None:
        ax.axhline(latency_target_s * 1e3, color="grey", ls=":", label="target")
    ax.set(
        yscale="log",
        xlabel="offered load (req/s)",
        ylabel="latency (ms)",
        title="Latency vs offered load",
    )
    return _save(fig, ax, path)


def plot_story(
    sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    latency_target_s: float | None = None,
    pruning: Sequence[str] = (),
) -> Path:
    """The method on one page: p99 latency against offered load for every system (top), and
    for the systems that prune, the students k they used and the accuracy they served at
    each load (bottom), so the latency held under a burst shows next to what it cost.

    Args:
        sweeps: system -> its low-load and burst summaries (``summarize`` output).
        pruning: the systems whose k follows the load.
    """
    fig = Figure(figsize=(8, 7), layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_k = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    colors: dict[str, Any] = {}
    for name, runs in sweeps.items():
        pts = sorted(
            (r["offered_rate_rps"], r["p99_ms"])
            for r in runs
            if r.get("offered_rate_rps") is not None and r.get("p99_ms") is not None
        )
        if pts:
            rate, p99 = zip(*pts, strict=True)
            (line,) = ax_lat.plot(rate, p99, "o-", label=name)
            colors[name] = line.get_color()
    if latency_target_s is not None:
        ax_lat.axhline(latency_target_s * 1e3, color="grey", ls=":", label="latency target")
    ax_lat.set(yscale="log", ylabel="p99 latency (ms)", title="Latency against offered load")
    ax_acc = ax_k.twinx()
    for name in pruning:
        pts = sorted(
            (r["offered_rate_rps"], r.get("mean_students_used"), r.get("accuracy"))
            for r in sweeps.get(name, ())
            if r.get("offered_rate_rps") is not None and r.get("mean_students_used") is not None
        )
        if not pts:
            continue
        rate, k, acc = zip(*pts, strict=True)
        ax_k.plot(rate, k, "o-", color=colors.get(name), label=f"{name}: students k")
        served = [(x, 100 * a) for x, a in zip(rate, acc, strict=True) if a is not None]
        if served:
            ax_acc.plot(*zip(*served, strict=True), "s--", color=colors.get(name), alpha=0.6)
    ax_k.set(xlabel="offered load (req/s)", ylabel="students k (solid)")
    ax_acc.set_ylabel("served accuracy % (dashed)")
    _save(fig, ax_k, path)
    return _save(fig, ax_lat, path)


def plot_timeline(
    timeline: Sequence[MetricSample],
    records: Sequence[Record],
    path: str | Path,
    bin_s: float = 1.0,
) -> Path:
    """Latency, active students k and queue depth over time, each panel shaded with the
    offered rate so a burst shows as a grey hump behind the system's reaction."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_k, ax_q = fig.subplots(3, 1, sharex=True)
    offsets = np.array([r.offset_s for r in records])
    end = max([0.0] + [r.end_s for r in records] + [s.t_s for s in timeline])
    edges = np.arange(0.0, end + bin_s, bin_s)
    offered = np.histogram(offsets, edges)[0] / bin_s if edges.size > 1 else np.zeros(0)
    for ax in (ax_lat, ax_k, ax_q):
        _shade_offered(ax, edges, offered)

    ok = [r for r in records if r.answered]
    ax_lat.scatter([r.offset_s for r in ok], [r.latency_s * 1e3 for r in ok], s=3, label="answered")
    bad = [r for r in records if not r.answered]
    if bad:
        ax_lat.scatter(
            [r.offset_s for r in bad],
            [max(r.latency_s, 1e-4) * 1e3 for r in bad],
            s=6,
            marker="x",
            color="tab:red",
            label="rejected/timeout/error",
        )
    ax_lat.set(yscale="log", ylabel="latency (ms)", title="Through the run")
    ax_lat.legend(loc="upper left", fontsize="small")

    used = [r for r in ok if r.students_used is not None]
    if used:
        ax_k.scatter(
            [r.end_s for r in used],
            [r.students_used for r in used],
            s=3,
            color="tab:green",
            alpha=0.4,
            label="k per answer",
        )
    _step(ax_k, timeline, "active_students", "active k (/metrics)")
    _step(ax_k, timeline, "cost_scale", "measured / profiled batch time")
    _step(ax_k, timeline, "replicas", "replicas (Ray Serve)")
    ax_k.set(ylabel="students k; cost scale; replicas")
    ax_k.legend(loc="upper left", fontsize="small")

    if not _step(ax_q, timeline, "queue_depth", "queue depth"):
        ax_q.text(
            0.5,
            0.5,
            "no /metrics from this server",
            transform=ax_q.transAxes,
            ha="center",
            va="center",
            color="grey",
        )
    ax_q.set(ylabel="queued requests", xlabel="time since start (s)")
    return _save(fig, None, path)


def plot_accuracy_vs_latency(summaries: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Served accuracy against latency: a dot at p50 and a bar out to p99, per system."""
    fig, ax = _figure()
    for name, s in summaries.items():
        if s.get("accuracy") is None or s.get("p50_ms") is None:
            continue
        acc = 100 * s["accuracy"]
        (dot,) = ax.plot([s["p50_ms"]], [acc], "o", label=name)
        ax.plot([s["p50_ms"], s["p99_ms"]], [acc, acc], "-", color=dot.get_color(), alpha=0.6)
        ax.annotate(
            name, (s["p50_ms"], acc), textcoords="offset points", xytext=(4, 4), fontsize="small"
        )
    ax.set(
        xscale="log",
        xlabel="latency (ms): dot p50, bar to p99",
        ylabel="served accuracy (%)",
        title="Accuracy vs latency",
    )
    return _save(fig, ax, path)


# --------------------------------------------------------------------------- markdown

_COLUMNS = (
    ("system", None, "{}"),
    ("offered/s", "offered_rate_rps", "{:.1f}"),
    ("throughput/s", "throughput_rps", "{:.1f}"),
    ("goodput/s", "goodput_rps", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p95 ms", "p95_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("accuracy %", "accuracy", "{:.2%}"),
    ("rejected", "rejected", "{}"),
    ("timed out", "timed_out", "{}"),
    ("errors", "errors", "{}"),
    ("mean k", "mean_students_used", "{:.2f}"),
    ("padding", "padding_ratio", "{:.1%}"),
)


def write_markdown(
    summaries: Mapping[str, Mapping[str, Any]],
    plots: Mapping[str, str | Path],
    path: str | Path,
    command: str,
    machine: str,
    title: str = "Serving benchmark",
) -> Path:
    """A report: how it was run, one table row per system, then each plot embedded.

    Args:
        summaries: ``summarize`` output by system name.
        plots: caption -> PNG path; linked relative to the report's folder.
        path: the markdown file to write.
        command: the command line that produced the numbers.
        machine: a one-line description of the hardware.
    """
    path = Path(path)
    target = next((s.get("latency_target_ms") for s in summaries.values()), None)
    lines = [f"# {title}", "", f"Machine: {machine}", "", "```", command, "```", ""]
    if target is not None:
        lines += [
            f"Goodput counts answers within {target:g} ms. Latency is measured from the "
            f"scheduled send time (open loop); accuracy is over the answers actually "
            f"served.",
            "",
        ]
    lines.append("| " + " | ".join(c[0] for c in _COLUMNS) + " |")
    lines.append("|" + "|".join("---" if c[1] is None else "---:" for c in _COLUMNS) + "|")
    for name, s in summaries.items():
        cells = [name] + [_cell(s.get(key), fmt) for _, key, fmt in _COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for caption, png in plots.items():
        rel = Path(os.path.relpath(Path(png).resolve(), path.parent.resolve())).as_posix()
        lines += [f"## {caption}", "", f"![{caption}]({rel})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- helpers


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _mean(values: Any) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _figure() -> tuple[Figure, Axes]:
    # Figure + Agg canvas directly, not pyplot: no global backend state, safe in threads.
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, ax: Axes | None, path: str | Path) -> Path:
    if ax is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    if ax is not None:
        ax.grid(True, which="both", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _shade_offered(ax: Axes, edges: np.ndarray, offered: np.ndarray) -> None:
    if offered.size == 0:
        return
    twin = ax.twinx()
    twin.fill_between(edges[:-1], offered, step="post", color="grey", alpha=0.2, lw=0)
    twin.set_ylabel("offered req/s", color="grey")
    twin.tick_params(axis="y", colors="grey")
    twin.set_ylim(bottom=0)
    # Keep the data axis in front of the shading.
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)


def _step(ax: Axes, timeline: Sequence[MetricSample], field: str, label: str) -> bool:
    pts = [(s.t_s, getattr(s, field)) for s in timeline if getattr(s, field) is not None]
    if not pts:
        return False
    t, v = zip(*pts, strict=True)
    ax.step(t, v, where="post", label=label)
    return True
