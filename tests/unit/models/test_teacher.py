"""Loading teachers: folders, bad folders, label and tokenizer mismatches."""

from __future__ import annotations

import pytest

from shoal.errors import ModelError
from shoal.models.teacher import load_teacher, resolve


def test_loads_a_classifier_folder(tiny_teacher):
    model, tok = load_teacher(tiny_teacher, 2)
    assert model.config.num_labels == 2
    assert len(tok) == model.config.vocab_size


def test_folder_without_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a model checkpoint"):
        resolve(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        resolve("./no/such/folder")


def test_missing_folder_under_a_local_folder_is_not_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelError, match="model folder runs/nope does not exist"):
        resolve("runs/nope")
    # without a local folder of that name, 'org/name' stays a hub name for from_pretrained
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_label_count_mismatch(tiny_teacher):
    with pytest.raises(ModelError, match="classifies into 2 labels but the data has 3"):
        load_teacher(tiny_teacher, 3)


def test_tokenizer_from_another_model_is_refused(tiny_teacher, tmp_path):
    import shutil

    from tiny_fixtures import make_tokenizer

    folder = tmp_path / "mixed"
    shutil.copytree(tiny_teacher, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    make_tokenizer(tmp_path / "other", extra=50).save_pretrained(folder)
    with pytest.raises(ModelError, match="different checkpoints"):
        load_teacher(folder, 2)


def test_a_cohort_is_not_taken_for_a_teacher(tiny_teacher, tiny_data, tmp_path):
    from shoal.distill.distill import distill
    from tiny_fixtures import tiny_distill_config

    distill(tiny_distill_config(tiny_teacher, tiny_data, tmp_path / "cohort", n_students=1))
    with pytest.raises(ModelError, match="is a Shoal cohort") as e:
        load_teacher(tmp_path / "cohort", 2)
    assert str(tiny_teacher) in str(e.value)  # names the teacher to use instead
