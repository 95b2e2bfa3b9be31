"""Fine-tuning from a teacher's outputs (``shoal finetune --distill-from``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from shoal.data import encode, load_task
from shoal.distill.distill import distill
from shoal.distill.evaluate import predict_logits
from shoal.distill.finetune import finetune
from shoal.errors import ConfigError
from shoal.models.teacher import load_teacher, logits_of
from tiny_fixtures import tiny_distill_config, tiny_finetune_config


@pytest.fixture
def kd_config(tiny_teacher, tiny_data, tmp_path):
    return tiny_finetune_config(
        tiny_teacher, tiny_data, tmp_path / "born-again", distill_from=str(tiny_teacher)
    )


def _predictions(folder, data) -> torch.Tensor:
    model, tok = load_teacher(folder)
    enc = encode(tok, load_task(data).splits["test"], 32)
    return predict_logits(logits_of(model.eval()), enc).argmax(-1)


def test_learns_the_cached_teacher_outputs_not_the_gold_labels(kd_config, tmp_path):
    first = finetune(kd_config)
    cache = tmp_path / "born-again" / "cache" / "logits"
    assert first["teacher_outputs"] == str(cache)
    logits = torch.load(cache / "logits.pt")
    assert logits.shape == (first["train_examples"], 2)
    # A teacher that answers one class, the one the starting model answers least, for
    # everything: a second run must read these outputs from the cache (not rerun the
    # teacher) and learn them, whatever the gold labels say.
    before = _predictions(kd_config.model, kd_config.data)
    forced_class = int(before.float().mean() < 0.5)
    assert not before.eq(forced_class).all()
    forced = torch.zeros_like(logits)
    forced[:, forced_class] = 8.0
    torch.save(forced, cache / "logits.pt")
    again = replace(
        kd_config,
        out=str(tmp_path / "forced"),
        cache_dir=str(tmp_path / "born-again" / "cache"),
        train=replace(kd_config.train, epochs=3),
    )
    report = finetune(again)
    assert report["teacher_outputs"] == str(cache)
    assert _predictions(tmp_path / "forced", kd_config.data).eq(forced_class).all()
    labels = load_task(kd_config.data).splits["test"].labels
    assert 0 < sum(labels) < len(labels)  # while the gold labels have both classes
    saved = json.loads((tmp_path / "forced" / "shoal_finetune.json").read_text())
    assert saved["config"]["distill_from"] == kd_config.distill_from


def test_reuses_a_distill_cache_of_the_same_augmented_set(
    kd_config, tiny_teacher, tiny_data, tmp_path
):
    cache = tmp_path / "shared-cache"
    distill(
        tiny_distill_config(
            tiny_teacher,
            tiny_data,
            tmp_path / "cohort",
            n_students=1,
            augment=1,
            cache_dir=str(cache),
        )
    )
    (distilled,) = cache.glob("depth*")
    report = finetune(replace(kd_config, augment=1, cache_dir=str(cache)))
    assert report["teacher_outputs"] == str(distilled)
    assert report["train_examples"] > report["gold_examples"]
    # another augmentation is another training set: not read from the distill cache
    other = finetune(replace(kd_config, augment=1, augment_p=0.9, cache_dir=str(cache)))
    assert other["teacher_outputs"] == str(cache / "logits")


def test_bad_settings_are_refused(kd_config, tmp_path):
    with pytest.raises(ConfigError, match="pass --distill-from TEACHER"):
        replace(kd_config, distill_from=None, augment=2)
    with pytest.raises(ConfigError, match="w_kd=0.0, w_ce=0.0"):
        replace(kd_config, w_kd=0.0)
    with pytest.raises(ConfigError, match="temperature=0"):
        replace(kd_config, temperature=0)


def test_a_teacher_with_another_tokenizer_is_refused(kd_config, tmp_path):
    import shutil

    from transformers import BertTokenizerFast

    from tiny_fixtures import SPECIALS, WORDS

    other = tmp_path / "other-vocab"
    shutil.copytree(kd_config.distill_from, other)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (other / name).unlink(missing_ok=True)
    # as many tokens as the embedding table (so the teacher loads), numbered another way
    words = SPECIALS + WORDS[::-1]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(other)
    with pytest.raises(ConfigError, match="tokenise differently"):
        finetune(replace(kd_config, distill_from=str(other)))


def test_a_half_written_cache_is_computed_again(kd_config, tmp_path):
    cache = tmp_path / "cache"
    (cache / "logits").mkdir(parents=True)
    (cache / "logits" / "teacher.json").write_text('{"n": 3')  # cut off mid-write
    report = finetune(replace(kd_config, cache_dir=str(cache)))
    assert report["teacher_outputs"] == str(cache / "logits")
    key = json.loads((cache / "logits" / "teacher.json").read_text())
    assert key["n"] == report["train_examples"]
    assert torch.load(cache / "logits" / "logits.pt").shape == (report["train_examples"], 2)


def test_the_report_scores_the_kept_checkpoint_not_the_last_step(kd_config, tmp_path, monkeypatch):
    """Training that gets worse after its best evaluation: the report must score the saved
    (best) checkpoint, as ``shoal eval`` of the output folder does."""
    from shoal.distill import finetune as finetune_mod
    from shoal.distill.trainer import TrainResult
    from shoal.evaluation import evaluate_model

    def best_then_broken(named, step, batches, config, *, evaluate, on_best, set_train, desc, **_):
        on_best(evaluate())  # the checkpoint kept on disk
        with torch.no_grad():  # later steps ruin the model: it answers class 1 for everything
            for name, p in named:
                if name.endswith("classifier.bias"):
                    p.copy_(torch.tensor([-50.0, 50.0]))
                elif name.endswith("classifier.weight"):
                    p.zero_()
        return TrainResult(steps=1)

    monkeypatch.setattr(finetune_mod, "train", best_then_broken)
    report = finetune(replace(kd_config, distill_from=None))
    saved = evaluate_model(kd_config.out, kd_config.data, max_length=32)
    labels = load_task(kd_config.data).splits["test"].labels
    all_one = sum(label == 1 for label in labels) / len(labels)
    assert saved["accuracy"] != pytest.approx(all_one)  # else the test could not tell
    assert report["test"]["accuracy"] == pytest.approx(saved["accuracy"])
