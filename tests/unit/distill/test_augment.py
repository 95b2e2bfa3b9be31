"""Word-replacement augmentation: neighbours, copies, determinism, and its use in distill."""

from __future__ import annotations

import json
import random

import pytest
import torch

from shoal.data import load_task
from shoal.distill.augment import (
    JOINS,
    augment,
    compose,
    copies_per_example,
    corpus_words,
    replace_words,
    swap_pairs,
    word_neighbours,
)
from shoal.distill.distill import DistillConfig, distill
from shoal.errors import ConfigError, DataError
from shoal.models.cohort import ShoalModel
from shoal.types import TextDataset
from tiny_fixtures import tiny_distill_config

VOCAB = {"[PAD]": 0, "good": 1, "great": 2, "bad": 3, "film": 4, "movie": 5, "##s": 6, "a": 7}


def _embeddings() -> torch.Tensor:
    e = torch.zeros(len(VOCAB), 3)
    e[VOCAB["good"]] = torch.tensor([1.0, 0.1, 0.0])
    e[VOCAB["great"]] = torch.tensor([1.0, 0.0, 0.0])
    e[VOCAB["bad"]] = torch.tensor([0.6, 0.8, 0.0])
    e[VOCAB["film"]] = torch.tensor([0.0, 0.0, 1.0])
    e[VOCAB["movie"]] = torch.tensor([0.0, 0.1, 1.0])
    e[VOCAB["##s"]] = torch.tensor([1.0, 0.1, 0.0])  # a word piece: never a candidate
    return e


def test_neighbours_are_nearest_whole_words_by_cosine():
    near = word_neighbours(VOCAB, _embeddings(), ["good", "film", "unknown", "a", "##s"], k=2)
    assert near == {"good": ["great", "bad"], "film": ["movie", "good"]}


def test_replace_words_keeps_unknown_words_and_capitalisation():
    near = {"good": ["great"], "film": ["movie"]}
    rng = random.Random(0)
    assert replace_words("A Good film , 10 / 10", near, 1.0, rng) == "A Great movie , 10 / 10"
    assert replace_words("GOOD film.", near, 1.0, rng) == "GREAT movie."
    assert replace_words("(good)  films", near, 1.0, rng) == "(great)  films"
    assert replace_words("good film", near, 0.0, rng) == "good film"


def test_augment_appends_distinct_copies_deterministically():
    data = TextDataset(["good film", "a"], [1, 0])
    near = {"good": ["great", "bad"], "film": ["movie"]}
    out = augment(data, near, copies=5, p=0.5, seed=1)
    assert out.texts[:2] == data.texts and out.labels[:2] == data.labels
    extra = out.texts[2:]
    assert extra and len(set(extra)) == len(extra) and "good film" not in extra
    assert "a" not in extra  # nothing to replace: no copy
    assert set(out.labels[2:]) == {1}
    assert augment(data, near, copies=5, p=0.5, seed=1) == out
    assert corpus_words(data) == {"good", "film", "a"}
    assert corpus_words(TextDataset(["Good, (film)!"], [1])) == {"good", "film"}


def test_augment_replaces_both_sides_of_pairs():
    data = TextDataset(["good"], [1], ["film"])
    out = augment(data, {"good": ["great"], "film": ["movie"]}, copies=3, p=1.0)
    assert out.texts == ["good", "great"] and out.text_pairs == ["film", "movie"]


def test_length_weighting_gives_long_texts_more_copies_at_the_same_total():
    short, long = "good", " ".join(["good film"] * 10)  # 1 word against 20
    data = TextDataset([short] * 50 + [long] * 50, [0] * 100)
    counts = copies_per_example(data, 4, "length", random.Random(0))
    assert copies_per_example(data, 4) == [4] * 100
    # mean 10.5 words: the short text's share is 4/10.5, the long one's 4*20/10.5 = 7.6
    assert all(c in (0, 1) for c in counts[:50]) and all(c in (7, 8) for c in counts[50:])
    assert abs(sum(counts) - 400) <= 20  # the total is kept, up to the random rounding
    capped = copies_per_example(TextDataset(["a"] * 99 + ["a " * 1000], [0] * 100), 2, "length")
    assert max(capped) == 8  # at most 4x the uniform count
    with pytest.raises(ValueError, match="weighting"):
        copies_per_example(data, 4, "words")


def test_augment_by_length_spends_the_copies_on_long_texts():
    data = TextDataset(["good", "good film good film good film"], [0, 1])
    near = {"good": ["great", "bad", "fine", "nice"], "film": ["movie", "films", "picture"]}
    out = augment(data, near, copies=2, p=1.0, seed=0, weighting="length")
    copies = out.texts[2:]
    assert len([t for t in copies if " " in t]) >= 3  # the long text gets 3 (of 4) copies
    assert augment(data, near, copies=2, p=1.0, seed=0, weighting="length") == out


@pytest.mark.parametrize(
    ("augment_by", "key"), [("uniform", [2, 0.4, 15, 0]), ("length", [2, 0.4, 15, 0, "length"])]
)
def test_distill_with_augmentation_trains_on_more_examples(
    tmp_path, tiny_data, tiny_teacher, augment_by, key
):
    cfg = tiny_distill_config(
        tiny_teacher, tiny_data, tmp_path / "aug", n_students=1, augment=2, augment_by=augment_by
    )
    distill(cfg)
    cached = json.loads(next((tmp_path / "aug" / "cache").glob("depth*/teacher.json")).read_text())
    n_train = len(load_task(str(tiny_data)).splits["train"])
    assert cached["augment"] == key  # uniform keeps the key of caches made before the option
    assert (
        n_train < cached["n"] <= 4 * n_train
    )  # 2 copies each, on average  # the teacher labelled the copies too
    assert ShoalModel.from_pretrained(tmp_path / "aug").n_students == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"augment": -1},
        {"augment": 1, "augment_p": 0.0},
        {"augment": 1, "w_ce": 0.5},
        {"augment": 1, "augment_by": "words"},
    ],
)
def test_bad_augmentation_settings_are_refused(kw):
    with pytest.raises(ConfigError, match="augment"):
        DistillConfig(teacher="t", **kw)


def test_swap_pairs_appends_every_pair_reversed_with_its_label():
    data = TextDataset(["a b", "c"], [1, 0], ["d", "e f"], num_labels=2)
    out = swap_pairs(data)
    assert out.texts == ["a b", "c", "d", "e f"]
    assert out.text_pairs == ["d", "e f", "a b", "c"]
    assert out.labels == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="pairs"):
        swap_pairs(TextDataset(["a"], [0]))


def test_distill_with_swapped_pairs_trains_on_both_orders(tmp_path, tiny_pair_data, tiny_teacher):
    cfg = tiny_distill_config(
        tiny_teacher,
        tiny_pair_data,
        tmp_path / "swap",
        n_students=1,
        swap_pairs=True,
        w_ce=1.0,  # reversed pairs keep their gold labels
    )
    distill(cfg)
    cached = json.loads(next((tmp_path / "swap" / "cache").glob("depth*/teacher.json")).read_text())
    assert cached["n"] == 2 * len(load_task(str(tiny_pair_data)).splits["train"])
    assert cached["swap_pairs"] is True and "augment" not in cached


def test_swapping_single_texts_is_refused(tmp_path, tiny_data, tiny_teacher):
    cfg = DistillConfig(
        teacher=str(tiny_teacher), data=str(tiny_data), out=str(tmp_path / "x"), swap_pairs=True
    )
    with pytest.raises(DataError, match="--swap-pairs"):
        distill(cfg)


def test_compose_joins_two_different_labelled_examples_with_a_connective():
    data = TextDataset(["a fine cast .", "the plot drags", "b", "c"], [1, 0, 1, 0])
    out = compose(data, 20, seed=3)
    assert out.texts[:4] == data.texts and out.labels[:4] == data.labels
    joined = out.texts[4:]
    assert 0 < len(joined) <= 20 and len(set(joined)) == len(joined)
    for text, label in zip(joined, out.labels[4:], strict=True):
        (first, second), join = next(
            (text.split(j, 1), j) for j in JOINS if j in text and text.split(j, 1)[0] != ""
        )
        firsts = [t.removesuffix(" .") for t in data.texts]
        assert first in firsts and second in data.texts and first != second.removesuffix(" .")
        assert label == data.labels[firsts.index(first)]  # the first part's (not gold) label
        assert not first.endswith(".")  # its full stop gives way to the connective
    assert compose(data, 20, seed=3).texts == out.texts  # deterministic


def test_compose_draws_from_the_pool_and_respects_max_words():
    long = ("x " * 30).strip()
    data = TextDataset(["one two", "three four", long, "copy one", "copy two"], [0, 1, 0, 1, 1])
    out = compose(data, 50, seed=0, max_words=10, pool=3)  # not the copies; not the long one
    pairs = [("one two", "three four"), ("three four", "one two")]
    assert set(out.texts[5:]) == {f"{a}{j}{b}" for a, b in pairs for j in JOINS}
    with pytest.raises(ValueError, match="text_pairs"):
        compose(TextDataset(["a", "b"], [0, 1], ["c", "d"]), 1)
    with pytest.raises(ValueError, match="at least 2"):
        compose(TextDataset(["a"], [0]), 1)


def test_distill_with_compose_trains_on_joined_texts(tmp_path, tiny_data, tiny_teacher):
    cfg = tiny_distill_config(
        tiny_teacher, tiny_data, tmp_path / "join", n_students=1, augment=1, compose=1
    )
    distill(cfg)
    cached = json.loads(next((tmp_path / "join" / "cache").glob("depth*/teacher.json")).read_text())
    n_train = len(load_task(str(tiny_data)).splits["train"])
    assert cached["compose"] == [1, 0] and cached["augment"] == [1, 0.4, 15, 0]
    assert 2 * n_train < cached["n"] <= 3 * n_train  # labelled + copies + joined texts


@pytest.mark.parametrize("kw", [{"compose": -1}, {"compose": 1, "w_ce": 0.5}])
def test_bad_compose_settings_are_refused(kw):
    with pytest.raises(ConfigError, match="compose"):
        DistillConfig(teacher="t", **kw)


def test_composing_sentence_pairs_is_refused(tmp_path, tiny_pair_data, tiny_teacher):
    cfg = DistillConfig(
        teacher=str(tiny_teacher), data=str(tiny_pair_data), out=str(tmp_path / "x"), compose=1
    )
    with pytest.raises(DataError, match="--compose"):
        distill(cfg)
