"""The documents: the CLI reference is the commands' own help, the README's results table is
docs/results/summary.json, links resolve, and no page tells the project's history."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SUMMARY = DOCS / "results" / "summary.json"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
HISTORY = re.compile(r"session [0-9]|issue [0-9#]|\blent\b|acceptance target", re.IGNORECASE)


def _load_cli_docs():
    spec = importlib.util.spec_from_file_location(
        "write_cli_docs", ROOT / "scripts" / "write_cli_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_the_commands_help():
    expected = _load_cli_docs().render()
    actual = (DOCS / "cli.md").read_text()
    assert actual == expected, "docs/cli.md is stale: run python scripts/write_cli_docs.py"


def test_cli_reference_covers_every_group():
    text = (DOCS / "cli.md").read_text()
    for title in ("shoal distill", "shoal teachers get", "shoal bench serve"):
        assert f"## `{title}`" in text
    assert "## `python -m shoal.serve.server`" in text
    assert "\x1b[" not in text  # no colour codes


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell)]


def _results_table() -> tuple[list[str], list[list[str]]]:
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| task (summary key)"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return header, rows


def test_readme_results_table_agrees_with_summary_json():
    summary = json.loads(SUMMARY.read_text())
    header, rows = _results_table()
    col = {name: i for i, name in enumerate(header)}
    assert rows, "the README's results table is empty"
    for row in rows:
        match = re.search(r"`([^`]+)`", row[0])
        assert match, f"no summary key in {row[0]!r}"
        key = match.group(1)
        cohort = summary["cohorts"][key]
        teacher = summary["teachers"][cohort["teacher"]]
        assert _numbers(row[col["teacher test acc"]]) == [teacher["test_accuracy"]], key
        assert (
            _numbers(row[col["cohort test acc, k = 1 / 2 / 3"]]) == cohort["test_accuracy_by_k"]
        ), key
        assert _numbers(row[col["cohort (students x layers)"]])[1] == cohort["layers"], key
        serving = summary["serving"].get(cohort.get("serving", ""))
        p50 = row[col["low-load p50 vs teacher"]]
        burst = row[col["burst rate vs teacher"]]
        if serving is None:
            assert not _numbers(p50) and not _numbers(burst), key
            continue
        assert _numbers(p50) == [serving["low_load_p50_ratio_vs_teacher_torch"]], key
        assert _numbers(burst) == [serving["burst_rate_ratio_vs_teacher_torch"]], key
        assert ("≥" in burst) == serving["burst_rate_is_lower_bound"], key
        p50_peer = row[col["low-load p50 vs Infinity"]]
        burst_peer = row[col["burst rate vs Infinity"]]
        if "low_load_p50_ratio_vs_infinity" not in serving:
            assert not _numbers(p50_peer) and not _numbers(burst_peer), key
            continue
        assert _numbers(p50_peer) == [serving["low_load_p50_ratio_vs_infinity"]], key
        assert _numbers(burst_peer) == [serving["burst_rate_ratio_vs_infinity"]], key
        assert ("≥" in burst_peer) == serving["burst_rate_ratio_vs_infinity_is_lower_bound"], key


def test_summary_entries_keep_their_command_and_commit():
    summary = json.loads(SUMMARY.read_text())
    for section in ("teachers", "cohorts", "serving"):
        for key, entry in summary[section].items():
            assert entry.get("command"), f"{section}[{key!r}] has no command"
            assert "commit" in entry, f"{section}[{key!r}] has no commit field"
    for entry in summary["cohorts"].values():  # the head's own metric, by k
        assert isinstance(entry[f"test_{entry.get('metric', 'accuracy')}_by_k"], list)
    assert "seconds" in summary["demo"] and summary["demo"]["command"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_tells_the_project_history(page: Path):
    found = [line for line in page.read_text().splitlines() if HISTORY.search(line)]
    assert not found, found


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: no heading for #{anchor}"
