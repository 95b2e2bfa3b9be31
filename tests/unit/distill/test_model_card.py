"""The model card: Hugging Face metadata holding the prefix table, prose, speed-ups, the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from shoal.distill.model_card import model_card, teacher_base, write_model_card
from shoal.errors import ModelError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "docs" / "examples" / "model_card_mpnet_sst2.md"
EXAMPLE_META = ROOT / "docs" / "results" / "screen_sst2_mpnet_base_diverse_meta.json"
COMMAND = "shoal distill --teacher t --data synth --students 2 --out c"
TABLE = [
    {"k": 1, "dev_accuracy": 0.71, "dev_f1": 0.72, "test_accuracy": 0.73, "test_f1": 0.74},
    {"k": 2, "dev_accuracy": 0.81, "dev_f1": 0.82, "test_accuracy": 0.83, "test_f1": 0.84},
]


@pytest.fixture(scope="module")
def cohort(tiny_teacher, tmp_path_factory) -> Path:
    """A tiny 2-student cohort folder with the meta ``shoal distill`` stores."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from shoal.models.cohort import ShoalModel

    folder = tmp_path_factory.mktemp("card") / "tiny-cohort"
    teacher = BertForSequenceClassification.from_pretrained(tiny_teacher)
    model = ShoalModel.from_teacher(teacher, 2, 1, [[0], [1]])
    model.meta |= {
        "prefix_accuracy": TABLE,
        "command": COMMAND,
        "teacher": str(tiny_teacher),
        "data": "data/synth",
        "method": "average",
        "label_names": ["neg", "pos"],
        "max_length": 32,
        "train_seconds": {
            "teacher_cache": 1.5,
            "students": [10.0, 12.5],
            "joint": 0.0,
            "total": 24.0,
        },
    }
    model.save_pretrained(folder, AutoTokenizer.from_pretrained(tiny_teacher))
    return folder


def _scores(card: ModelCard) -> dict[tuple[str, str, str], float]:
    """(split, metric type, metric name) -> value of every model-index result."""
    return {
        (r.dataset_split, r.metric_type, r.metric_name): r.metric_value
        for r in card.data.eval_results
    }


def _expected(table: list[dict]) -> dict[tuple[str, str, str], float]:
    return {
        (split, metric, f"{metric} (k={row['k']} student{'s' if row['k'] > 1 else ''})"): row[
            f"{split}_{metric}"
        ]
        for row in table
        for split in ("dev", "test")
        for metric in ("accuracy", "f1")
    }


def test_card_metadata_holds_the_teacher_and_every_prefix_score(cohort, tiny_teacher):
    path = write_model_card(cohort)
    assert path == cohort / "README.md"
    text = path.read_text()
    front = yaml.safe_load(text.split("---\n")[1])  # the YAML between the first two '---'
    assert front["library_name"] == "shoal" and front["pipeline_tag"] == "text-classification"
    assert front["base_model"] == str(tiny_teacher)
    assert front["datasets"] == ["data/synth"] and "shoal" in front["tags"]
    assert front["model-index"][0]["name"] == "tiny-cohort"
    # one entry per split, every k's accuracy and F1 in it
    splits = [entry["dataset"]["split"] for entry in front["model-index"][0]["results"]]
    assert splits == ["dev", "test"]
    card = ModelCard.load(path)
    assert card.data.base_model == str(tiny_teacher)
    assert _scores(card) == _expected(TABLE)
    assert {r.task_type for r in card.data.eval_results} == {"text-classification"}


def test_card_prose_tells_what_it_is_and_how_to_use_it(cohort):
    text = ModelCard.load(write_model_card(cohort)).text
    assert COMMAND in text
    assert "2 students of 1 transformer layer " in text
    assert "Student 1 starts from teacher layers 0." in text
    assert "Student 2 starts from teacher layers 1." in text
    assert f"shoal serve {cohort} --port 8000" in text
    assert f"shoal eval {cohort} --data data/synth --by-k" in text
    assert "--max-accuracy-drop" in text and "at most 32 tokens" in text
    assert "| 2 | 81.00 | 82.00 | 83.00 | 84.00 |" in text
    assert "Training took 24 s" in text and "12.5 s" in text
    # no kernels.json in the folder: the card says how to measure
    assert f"shoal bench kernels --cohort {cohort}" in text and "Not measured" in text


def test_speedups_come_from_the_folders_kernels_json(cohort, tmp_path):
    kernels = {
        "command": "shoal bench kernels --cohort x",
        "cohort": {"n_students": 2, "student_layers": 1, "hidden": 32, "from": "x"},
        "teacher": {"layers": 2, "hidden": 32},
        "inputs": {"length": 25},
        "machine": {"cpu": "Test CPU"},
        "summary": {
            "threads_1": {"speedup_vs_hf_eager": 3.0, "speedup_vs_onnxruntime": 2.0},
            "threads_2": {"ort_int8_speedup_vs_hf_eager": 9.5},
            "multiprocess": {},
        },
    }
    (tmp_path / "kernels.json").write_text(json.dumps(kernels))
    own = write_model_card(cohort).read_text()
    out = write_model_card(cohort, kernels=tmp_path / "kernels.json", out=tmp_path / "card.md")
    text = out.read_text()
    assert "| eager fp32 | 1 | 3.00x | 2.00x |" in text
    assert "| ONNX Runtime int8 | 2 | 9.50x | - |" in text
    assert "Test CPU" in text and "Not measured" not in text
    assert (cohort / "README.md").read_text() == own  # --out leaves the folder's card alone
    kernels["cohort"]["n_students"] = 3
    (tmp_path / "kernels.json").write_text(json.dumps(kernels))
    with pytest.raises(ModelError, match=r"3 x 1 x 32 .* this one is 2 x 1 x 32"):
        write_model_card(cohort, kernels=tmp_path / "kernels.json", out=tmp_path / "card.md")
    with pytest.raises(ModelError, match="does not exist"):
        write_model_card(cohort, kernels=tmp_path / "missing.json", out=tmp_path / "card.md")


def test_teacher_base_is_what_the_teacher_was_fine_tuned_from(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    assert teacher_base(str(teacher)) is None
    (teacher / "config.json").write_text(json.dumps({"_name_or_path": "org/base"}))
    assert teacher_base(str(teacher)) == "org/base"
    (teacher / "shoal_finetune.json").write_text(json.dumps({"config": {"model": "runs/base"}}))
    assert teacher_base(str(teacher)) == "runs/base"
    assert teacher_base("org/hub-model") is None


def test_a_split_not_scored_is_left_out():
    config = {"n_students": 1, "student_layers": 2, "hidden_size": 32, "num_attention_heads": 2}
    meta = {"prefix_accuracy": [{"k": 1, "dev_accuracy": 0.5, "dev_f1": 0.4}], "teacher": "t"}
    card = ModelCard(
        model_card(config, meta, {"data": "d"}, name="n", folder="c", teacher_base="b")
    )
    assert {r.dataset_split for r in card.data.eval_results} == {"dev"}
    assert "| 1 | 50.00 | 40.00 | - | - |" in card.text
    assert "`t` (fine-tuned from `b`) on `d`" in card.text


def test_script_writes_a_card_elsewhere_and_refuses_a_non_cohort(cohort, tmp_path):
    script = str(ROOT / "scripts" / "write_model_card.py")
    out = tmp_path / "docs" / "card.md"
    r = subprocess.run(
        [sys.executable, script, str(cohort), "--out", str(out), "--name", "tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert ModelCard.load(out).data.model_name == "tiny"
    r = subprocess.run(
        [sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "not a Shoal cohort" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_committed_example_is_a_valid_card_of_the_real_cohort():
    card = ModelCard.load(EXAMPLE)
    meta = json.loads(EXAMPLE_META.read_text())
    assert card.data.base_model == meta["teacher"]
    assert card.data.library_name == "shoal"
    assert _scores(card) == _expected(meta["prefix_accuracy"])
    assert meta["command"] in card.text
