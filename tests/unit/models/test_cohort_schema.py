"""Checking a cohort folder's files before anything is allocated: every field of config.json and
shoal_meta.json that Shoal reads, by type and range; the two files against each other; the
weights' shapes against the config, from the safetensors header alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from shoal.models.cohort import ShoalConfig, ShoalModel
from shoal.models.cohort_folder import is_cohort, read_cohort, read_config
from shoal.models.cohort_schema import (
    ACTIVATION_NAMES,
    CONFIG_FIELDS,
    FAMILY_NAMES,
    CohortFileError,
)
from shoal.models.cohort_weights import expected_shapes, header_shapes

TINY = dict(
    vocab_size=25,
    hidden_size=32,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    n_students=2,
    student_layers=1,
)
META = {
    "max_length": 32,
    "label_names": ["neg", "pos"],
    "prefix_accuracy": [
        {"k": 1, "dev_accuracy": 0.5, "dev_f1": 0.4, "dev_disagreement": None},
        {"k": 2, "dev_accuracy": 0.6, "test_accuracy": 0.55, "note": "kept as written"},
    ],
    "teacher": "tiny",
    "train_seconds": {"total": 1.0},
}
DROP = object()
"""A case value: remove the field."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("schema") / "cohort"
    torch.manual_seed(0)
    model = ShoalModel(ShoalConfig(**TINY))
    model.meta = json.loads(json.dumps(META))
    model.save_pretrained(folder)
    return folder


def _corrupt(cohort: Path, tmp_path: Path, name: str, changes: dict) -> Path:
    """A copy of the cohort whose file ``name`` has ``changes`` (dotted paths for prefix-table
    rows: 'prefix_accuracy.0.k'; a whole row list for 'prefix_accuracy')."""
    folder = tmp_path / "bad"
    shutil.copytree(cohort, folder)
    data = json.loads((folder / name).read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        target = data
        for p in parents:
            target = target[int(p) if p.isdigit() else p]
        if value is DROP:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    (folder / name).write_text(json.dumps(data))
    return folder


NAN = float("nan")
CONFIG_CASES = [  # (field the error names, changes to config.json)
    *[("vocab_size", {"vocab_size": v}) for v in ("25", 25.0, 0, (1 << 20) + 1, DROP)],
    *[("hidden_size", {"hidden_size": v}) for v in ("big", True, 0, 16_385, DROP)],
    *[("num_attention_heads", {"num_attention_heads": v}) for v in (4.0, 0, 257, 5, DROP)],
    *[("intermediate_size", {"intermediate_size": v}) for v in (None, 0, 65_537, DROP)],
    *[("max_position_embeddings", {"max_position_embeddings": v}) for v in ("64", 0, 65_537)],
    *[("type_vocab_size", {"type_vocab_size": v}) for v in (-1, 1025, "2")],
    *[("layer_norm_eps", {"layer_norm_eps": v}) for v in (0, 1, -1e-5, "1e-12", NAN)],
    *[("pad_token_id", {"pad_token_id": v}) for v in (-1, 25, "0")],
    *[("family", {"family": v}) for v in ("gpt2", 1)],
    *[("positions", {"positions": v}) for v in ("relative", None)],
    *[("embedding_size", {"embedding_size": v}) for v in (0, 16_385, "16")],
    *[
        ("relative_attention_num_buckets", {"relative_attention_num_buckets": v})
        for v in (2, -1, 1025, True, 0.0)
    ],
    *[("hidden_act", {"hidden_act": v}) for v in ("swish", 0)],
    ("head_activation", {"head_activation": "softmax"}),
    *[("num_labels", {"num_labels": v}) for v in (0, "2", 65_537)],
    *[("id2label", {"id2label": v}) for v in ([], {"0": 1}, {"2": "x"}, {"a": "x"})],
    *[("n_students", {"n_students": v}) for v in (0, 129, "2", 2.5, None)],
    *[("student_layers", {"student_layers": v}) for v in (0, 65, "1")],
    *[("dropout", {"dropout": v}) for v in (1, -0.1, "0.1")],
    *[("head_per_student", {"head_per_student": v}) for v in (1, "false")],
    ("combine", {"combine": "max"}),
    ("surprise", {"surprise": 1}),
    ("max_position_embeddings", {"positions": "padded", "pad_token_id": 24, "vocab_size": 25,
                                 "max_position_embeddings": 25}),
]  # fmt: skip
META_CASES = [  # (field the error names, changes to shoal_meta.json)
    *[("max_length", {"max_length": v}) for v in ("big", -5, 1, 8193, 65, 2.5, True)],
    *[("label_names", {"label_names": v}) for v in ("neg", [1, 2], {})],
    *[("prefix_accuracy", {"prefix_accuracy": v}) for v in ({}, [1], "0.9")],
    ("prefix_accuracy[0].k", {"prefix_accuracy.0.k": DROP}),
    *[("prefix_accuracy[1].k", {"prefix_accuracy.1.k": v}) for v in (0, 3, "2", 2.0, 129, 1)],
    *[
        ("prefix_accuracy[0].dev_accuracy", {"prefix_accuracy.0.dev_accuracy": v})
        for v in (1.5, -0.1, "0.9", [0.5], NAN)
    ],
    ("prefix_accuracy[1].test_accuracy", {"prefix_accuracy.1.test_accuracy": 55.0}),
    ("prefix_accuracy[0].dev_f1", {"prefix_accuracy.0.dev_f1": 2}),
    ("prefix_accuracy[0].dev_disagreement", {"prefix_accuracy.0.dev_disagreement": "x"}),
    *[("teacher", {"teacher": v}) for v in (5, [])],
]


def _assert_one_line(e: CohortFileError, file: Path, field: str) -> None:
    message = str(e)
    assert "\n" not in message, message
    assert message.startswith(f"{file}: "), message
    assert field in message and e.field == field, message
    assert "distil the cohort again" in message, message  # the fix


@pytest.mark.parametrize(("field", "changes"), CONFIG_CASES, ids=repr)
def test_every_config_field_is_checked(cohort, tmp_path, field, changes):
    folder = _corrupt(cohort, tmp_path, "config.json", changes)
    assert is_cohort(folder)  # still routed as a cohort, then refused
    for load in (read_cohort, ShoalModel.from_pretrained):
        with pytest.raises(CohortFileError) as err:
            load(folder)
        _assert_one_line(err.value, folder / "config.json", field)


@pytest.mark.parametrize(("field", "changes"), META_CASES, ids=repr)
def test_every_meta_field_is_checked(cohort, tmp_path, field, changes):
    folder = _corrupt(cohort, tmp_path, "shoal_meta.json", changes)
    for load in (read_cohort, ShoalModel.from_pretrained):
        with pytest.raises(CohortFileError) as err:
            load(folder)
        _assert_one_line(err.value, folder / "shoal_meta.json", field)


def test_message_names_value_range_and_meaning(cohort, tmp_path):
    folder = _corrupt(cohort, tmp_path, "shoal_meta.json", {"max_length": -5})
    with pytest.raises(CohortFileError) as err:
        read_cohort(folder)
    assert str(err.value) == (
        f"{folder}/shoal_meta.json: max_length is -5; it must be an integer from 2 to 8192 or "
        "null (the token length the cohort was distilled with): correct the file or distil "
        "the cohort again"
    )


def test_a_sound_cohort_passes_with_defaults_filled(cohort, tmp_path):
    config, meta = read_cohort(cohort)
    assert meta == META and config["n_students"] == 2
    model = ShoalModel.from_pretrained(cohort)
    assert model.meta == META and model.n_students == 2
    # optional fields may be left out: ShoalConfig's defaults apply
    folder = _corrupt(cohort, tmp_path, "config.json", {"combine": DROP, "dropout": DROP})
    filled = read_config(folder)
    assert filled["combine"] == "sum" and filled["dropout"] == 0.1
    none = _corrupt(cohort, tmp_path / "n", "shoal_meta.json", {"max_length": None})
    assert read_cohort(none)[1]["max_length"] is None


def test_schema_matches_shoal_config_and_the_registries():
    from shoal.models.families import FAMILIES
    from shoal.models.layers import ACTIVATIONS

    fields = {f.name: f for f in dataclasses.fields(ShoalConfig)}
    assert list(CONFIG_FIELDS) == list(fields)
    for name, f in fields.items():
        spec = CONFIG_FIELDS[name]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert spec.required, name
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            assert not spec.required and spec.default == default, name
            assert spec.rule.accepts(default), name
    assert set(FAMILY_NAMES) == set(FAMILIES) and tuple(ACTIVATIONS) == ACTIVATION_NAMES


SHAPE_VARIANTS = [
    {},
    {"head_per_student": True, "num_labels": 3, "n_students": 3, "student_layers": 2},
    {"type_vocab_size": 0},
    {"embedding_size": 16},
    {"relative_attention_num_buckets": 32, "positions": "padded", "pad_token_id": 1},
]


@pytest.mark.parametrize("variant", SHAPE_VARIANTS, ids=repr)
def test_expected_shapes_are_the_model_state(variant, tmp_path):
    config = ShoalConfig(**{**TINY, **variant})
    model = ShoalModel(config)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert expected_shapes(dataclasses.asdict(config)) == state
    model.save_pretrained(tmp_path)
    assert header_shapes(tmp_path / "model.safetensors") == state


def test_a_config_that_disagrees_with_the_weights_fails_before_allocating(
    cohort, tmp_path, monkeypatch
):
    folder = _corrupt(cohort, tmp_path, "config.json", {"hidden_size": 16_384})

    def allocate(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(ShoalModel, "__init__", allocate)
    monkeypatch.setattr("shoal.models.cohort.load_file", allocate)
    with pytest.raises(CohortFileError) as err:
        ShoalModel.from_pretrained(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / 'config.json'}: the config and model.safetensors")
    assert "disagree" in message and "hidden_size 16384" in message and "\n" not in message
    assert "embeddings.word_embeddings.weight is [25, 32] in the weights" in message

    more = _corrupt(cohort, tmp_path / "n", "config.json", {"n_students": 3})
    with pytest.raises(CohortFileError, match=r"students\.2\.layers\.0\.query\.weight is missing"):
        read_cohort(more)
    fewer = _corrupt(cohort, tmp_path / "h", "config.json", {"head_per_student": True})
    with pytest.raises(CohortFileError, match=r"disagree"):
        read_cohort(fewer)


def _damage(cohort: Path, tmp_path: Path, data: bytes) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(cohort, folder)
    (folder / "model.safetensors").write_bytes(data)
    return folder


def test_a_damaged_weights_header_is_named(cohort, tmp_path):
    good = (cohort / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    bad_entry = good.replace(b'"F32"', b'"X32"', 1)
    cases = {
        "garbage": b"\x00garbage" * 100,
        "empty": b"",
        "truncated": good[:-10],
        "longer": good + b"\x00" * 4,
        "not json": good[:8] + b"\xff" * n + good[8 + n :],
        "bad dtype": bad_entry,
    }
    for i, (what, data) in enumerate(cases.items()):
        folder = _damage(cohort, tmp_path / str(i), data)
        for load in (read_cohort, ShoalModel.from_pretrained):
            with pytest.raises(CohortFileError) as err:
                load(folder)
            message = str(err.value)
            assert message.startswith(f"{folder / 'model.safetensors'}: "), (what, message)
            assert "damaged" in message and "\n" not in message, (what, message)


def test_missing_weights_keep_their_message(cohort, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(cohort, folder)
    (folder / "model.safetensors").unlink()
    assert read_cohort(folder)[0]["n_students"] == 2  # the JSON alone is readable
    with pytest.raises(Exception, match="it needs model.safetensors"):
        ShoalModel.from_pretrained(folder)
