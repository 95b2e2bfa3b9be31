"""Reading a cohort folder without its weights: which folders are cohorts, the meta file, label
names and the stored prefix accuracy."""

from __future__ import annotations

import json

import pytest

from shoal.errors import ModelError
from shoal.models.cohort_folder import (
    is_cohort,
    label_names,
    prefix_accuracy,
    read_cohort,
    read_config,
)

COHORT = {
    "model_type": "shoal-cohort",
    "vocab_size": 25,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}
"""The fields a cohort config must have (``ShoalConfig``'s others have defaults)."""


def _folder(tmp_path, config, meta=None):
    folder = tmp_path / "cohort"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if meta is not None:
        (folder / "shoal_meta.json").write_text(meta)
    return folder


def test_only_a_shoal_config_makes_a_cohort(tmp_path):
    cohort = _folder(tmp_path, {**COHORT, "n_students": 2})
    assert is_cohort(cohort) and read_config(cohort)["n_students"] == 2
    assert not is_cohort(tmp_path / "missing")
    for i, config in enumerate(({"model_type": "bert"}, "[1, 2]", "{not json")):
        other = _folder(tmp_path / str(i), config)
        assert not is_cohort(other)
        with pytest.raises(ModelError, match="not a Shoal cohort"):
            read_config(other)


def test_meta_is_optional_but_must_be_an_object(tmp_path):
    cohort = _folder(tmp_path, COHORT)
    assert read_cohort(cohort)[1] == {}
    (cohort / "shoal_meta.json").write_text("[]")
    with pytest.raises(ModelError, match="not a JSON object"):
        read_cohort(cohort)
    (cohort / "shoal_meta.json").write_text('{"label_names": [')
    with pytest.raises(ModelError, match="shoal_meta.json is not valid JSON"):
        read_cohort(cohort)


def test_label_names_and_prefix_accuracy():
    config = {"num_labels": 2, "id2label": {"0": "neg"}}
    assert label_names(config, {}) == ["neg", "LABEL_1"]
    assert label_names(config, {"label_names": ["a", "b"]}) == ["a", "b"]
    assert label_names(config, {"label_names": ["a"]}) == ["neg", "LABEL_1"]
    meta = {"prefix_accuracy": [{"k": 2, "dev_accuracy": 0.9}, {"k": 1, "dev_accuracy": 0.8}]}
    assert prefix_accuracy(meta, 2, "dev") == (0.8, 0.9)
    assert prefix_accuracy(meta, 3, "dev") == () and prefix_accuracy(meta, 2, "test") == ()
