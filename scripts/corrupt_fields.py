"""Count how many corrupt cohort fields still end in a traceback (the goal is 0).

Builds a tiny random cohort (hidden 32, 2 students of 1 layer, a word-level tokenizer) and a
tiny TSV task in a temporary folder, then corrupts one field of config.json or shoal_meta.json
at a time (a wrong type, a value out of range, a required field removed, two fields that
disagree, a config whose shapes are not the weights') and runs `shoal eval` on the copy, or
with --command serve the server's start (`python -m shoal.serve.server`), in a subprocess.
Prints one JSON object:

    {"command": "eval", "cases": 82, "tracebacks": 0, "one_line_errors": 82, "accepted": 0,
     "timeouts": 0, "other": 0, "traceback_cases": []}

``one_line_errors``: exit code 2 with exactly one ``error:`` line; ``accepted``: exit code 0
(or, for serve, a server listening when --serve-timeout seconds have passed); ``timeouts``: a
server neither listening nor exited by then (a loaded machine: raise --serve-timeout);
``other``: any other exit without a traceback.

    python scripts/corrupt_fields.py [--command eval|serve] [--jobs 2] [--cases 10]

Each case runs under an address-space cap (--memory-gb, default 8): a config that claims a huge
model and is not refused ends in a memory error there, not in the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DROP = "<drop>"
"""A case value: remove the field."""

CONFIG_CASES: list[tuple[str, object]] = [
    *[("vocab_size", v) for v in ("25", 0, 25.5, DROP)],
    *[("hidden_size", v) for v in ("big", 0, -32, 16_384, 16_385, True, DROP)],
    *[("num_attention_heads", v) for v in ("4", 0, 5, 4.0, DROP)],
    *[("intermediate_size", v) for v in (None, 0, "37", DROP)],
    *[("max_position_embeddings", v) for v in ("64", 0, -1)],
    *[("type_vocab_size", v) for v in (-1, "2")],
    *[("layer_norm_eps", v) for v in ("tiny", 0, -1.0)],
    *[("pad_token_id", v) for v in (-1, 25, "0")],
    *[("family", v) for v in ("gpt2", 7)],
    *[("positions", v) for v in ("relative", None)],
    *[("embedding_size", v) for v in (0, "16")],
    *[("relative_attention_num_buckets", v) for v in (-1, 2, "32")],
    *[("hidden_act", v) for v in ("swish", 1)],
    ("head_activation", "softmax"),
    *[("num_labels", v) for v in (0, "2", 1.5)],
    *[("id2label", v) for v in ([], {"0": 1}, {"7": "x"})],
    *[("n_students", v) for v in (0, 3, "2", 2.5, None)],
    *[("student_layers", v) for v in (0, 2, "1")],
    *[("dropout", v) for v in (1.5, "0.1")],
    *[("head_per_student", v) for v in ("no", 1, True)],
    ("combine", "max"),
    ("surprise", 1),
]
META_CASES: list[tuple[str, object]] = [
    *[("max_length", v) for v in ("big", -5, 0, 2.5, 100_000, 65)],
    *[("label_names", v) for v in ("neg", [1, 2])],
    *[
        ("prefix_accuracy", v)
        for v in (
            {},
            [1],
            [{"dev_accuracy": 0.5}],
            [{"k": 0, "dev_accuracy": 0.5}],
            [{"k": 3, "dev_accuracy": 0.5}],
            [{"k": "1", "dev_accuracy": 0.5}],
            [{"k": 1, "dev_accuracy": 1.5}],
            [{"k": 1, "dev_accuracy": "high"}],
            [{"k": 1, "dev_accuracy": 0.5}, {"k": 1, "dev_accuracy": 0.6}],
        )
    ],
    ("teacher", 5),
]

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "the", "a"]
WORDS += [f"w{i}" for i in range(25 - len(WORDS))]


def build(root: Path) -> tuple[Path, Path]:
    """A tiny cohort (with its tokenizer) and a tiny TSV task under ``root``."""
    import torch
    from transformers import BertTokenizerFast

    from shoal.models.cohort import ShoalConfig, ShoalModel

    cohort = root / "cohort"
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}, do_lower_case=True)
    torch.manual_seed(0)
    model = ShoalModel(
        ShoalConfig(
            vocab_size=len(tok), hidden_size=32, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, n_students=2, student_layers=1,
        )
    )  # fmt: skip
    model.meta = {
        "max_length": 32,
        "label_names": ["neg", "pos"],
        "prefix_accuracy": [{"k": 1, "dev_accuracy": 0.5}, {"k": 2, "dev_accuracy": 0.6}],
        "teacher": "tiny",
    }
    model.save_pretrained(cohort, tok)
    data = root / "data"
    data.mkdir()
    rows = "".join(f"{'good movie' if i % 2 else 'bad movie'}\t{i % 2}\n" for i in range(8))
    for split in ("train", "dev", "test"):
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return cohort, data


def corrupt(cohort: Path, out: Path, name: str, field: str, value: object) -> Path:
    shutil.copytree(cohort, out)
    data = json.loads((out / name).read_text())
    if value == DROP:
        data.pop(field, None)
    else:
        data[field] = value
    (out / name).write_text(json.dumps(data))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _memory_cap(gib: float):
    """A preexec function capping a case's address space (a config may claim gigabytes)."""

    def cap() -> None:
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap if gib > 0 else None


def run_case(folder: Path, data: Path, command: str, serve_timeout: float, gib: float) -> dict:
    """Run the command on one corrupt folder; how it ended."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if command == "eval":
        argv = [sys.executable, "-m", "shoal", "eval", str(folder), "--data", str(data)]
        argv += ["--split", "dev", "--device", "cpu"]
        timeout = None
    else:
        argv = [sys.executable, "-m", "shoal.serve.server", str(folder), "--threads", "1"]
        argv += ["--host", "127.0.0.1", "--port", str(_free_port())]
        timeout = serve_timeout
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_memory_cap(gib),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        started = "Uvicorn running on" in out + err
        return {"outcome": "accepted" if started else "timeout", "rc": None, "lines": 0}
    text = out + err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    if "Traceback (most recent call last)" in text:
        outcome = "traceback"
    elif proc.returncode == 2 and len(errors) == 1:
        outcome = "one_line_error"
    elif proc.returncode == 0:
        outcome = "accepted"
    else:
        outcome = "other"
    return {"outcome": outcome, "rc": proc.returncode, "lines": len(text.splitlines())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--command", choices=("eval", "serve"), default="eval")
    p.add_argument("--jobs", type=int, default=2, help="Cases run at once.")
    p.add_argument("--cases", type=int, default=0, help="Run only the first N cases (0: all).")
    p.add_argument("--serve-timeout", type=float, default=90.0, help="Seconds a server may run.")
    p.add_argument(
        "--memory-gb", type=float, default=8.0, help="Address-space cap per case (0: none)."
    )
    p.add_argument("--verbose", action="store_true", help="Print every case's outcome.")
    args = p.parse_args(argv)
    cases = [("config.json", f, v) for f, v in CONFIG_CASES]
    cases += [("shoal_meta.json", f, v) for f, v in META_CASES]
    if args.cases:
        cases = cases[: args.cases]
    with tempfile.TemporaryDirectory(prefix="shoal-corrupt-") as tmp:
        cohort, data = build(Path(tmp))
        folders = [
            corrupt(cohort, Path(tmp) / f"case{i}", name, field, value)
            for i, (name, field, value) in enumerate(cases)
        ]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(
                pool.map(
                    lambda f: run_case(f, data, args.command, args.serve_timeout, args.memory_gb),
                    folders,
                )
            )
    counts = {k: 0 for k in ("traceback", "one_line_error", "accepted", "timeout", "other")}
    for r in results:
        counts[r["outcome"]] += 1
    labels = [f"{name}:{field}={json.dumps(value)}" for name, field, value in cases]
    if args.verbose:
        for label, r in zip(labels, results):
            print(f"{r['outcome']:15} rc={r['rc']} lines={r['lines']:3} {label}", file=sys.stderr)
    report = {
        "command": args.command,
        "cases": len(cases),
        "tracebacks": counts["traceback"],
        "one_line_errors": counts["one_line_error"],
        "accepted": counts["accepted"],
        "timeouts": counts["timeout"],
        "other": counts["other"],
        "traceback_cases": [x for x, r in zip(labels, results) if r["outcome"] == "traceback"],
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
