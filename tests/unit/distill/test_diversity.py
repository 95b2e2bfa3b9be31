"""The levers that make students differ and learn more: per-student data shards, attention
relations, unlabeled texts, dev-selected training and the disagreement column."""

from __future__ import annotations

import json

import pytest
import torch

from shoal.data import read_unlabeled
from shoal.distill import losses, students
from shoal.distill.config import DistillConfig
from shoal.distill.distill import distill
from shoal.distill.trainer import TrainConfig, train
from shoal.errors import ConfigError, DataError
from shoal.models.layers import Layer
from tiny_fixtures import tiny_distill_config


def test_shards_keep_every_labelled_example_and_split_the_added_texts():
    config = DistillConfig(teacher="t", n_students=3, student_data="shards")
    rows = [students.student_rows(20, 5, k, config) for k in range(3)]
    for r in rows:
        assert r is not None and r[:5] == [0, 1, 2, 3, 4]
    added = [set(r[5:]) for r in rows if r is not None]
    assert set().union(*added) == set(range(5, 20))
    assert sum(len(a) for a in added) == 15  # disjoint
    assert students.student_rows(20, 5, 1, DistillConfig(teacher="t")) is None


def test_relation_loss_is_zero_for_the_same_layer_and_grows_when_they_differ():
    torch.manual_seed(0)
    layer, other = Layer(16, 4, 32, 1e-12), Layer(16, 4, 32, 1e-12)
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7)
    mask[0, 4:] = 0
    same = losses.relation_loss(x, x, layer, layer, mask, 4)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    apart = losses.relation_loss(x, x, other, layer, mask, 4)
    assert apart.item() > 1e-3
    # padded tokens do not count: changing them leaves the loss as it was
    y = x.clone()
    y[0, 4:] = torch.randn(3, 16)
    assert losses.relation_loss(y, y, other, layer, mask, 4).item() == pytest.approx(
        apart.item(), rel=1e-5
    )


def test_relation_loss_trains_the_student_and_its_cache_serves_runs_without_it(
    tmp_path, tiny_teacher, tiny_data, monkeypatch
):
    seen: list[float] = []
    real = losses.relation_loss
    monkeypatch.setattr(
        losses, "relation_loss", lambda *a, **k: seen.append(real(*a, **k).item()) or real(*a, **k)
    )
    cache = tmp_path / "cache"
    distill(tiny_distill_config(tiny_teacher, tiny_data, tmp_path / "rel", w_rel=1.0,
                                cache_dir=str(cache)))  # fmt: skip
    assert seen and all(v >= 0 for v in seen)
    folder = next(cache.glob("depth*"))
    assert json.loads((folder / "teacher.json").read_text())["late"] is True
    before = (folder / "final.npy").stat().st_mtime_ns
    distill(tiny_distill_config(tiny_teacher, tiny_data, tmp_path / "plain", cache_dir=str(cache)))
    assert (folder / "final.npy").stat().st_mtime_ns == before  # the teacher did not run again


def test_unlabeled_texts_are_split_into_sentences_and_join_the_training_set(
    tmp_path, tiny_teacher, tiny_data
):
    tsv = tmp_path / "u.tsv"
    tsv.write_text("text\nA fine film. I loved it a lot! ok\nA fine film. Too long and slow\n")
    assert read_unlabeled(tsv) == ["A fine film.", "I loved it a lot!", "Too long and slow"]
    assert (
        read_unlabeled(tsv, sentences=False, min_words=1)[0] == "A fine film. I loved it a lot! ok"
    )
    plain = tmp_path / "u.txt"
    plain.write_text("one two three\n\nfour five six\n")
    assert read_unlabeled(plain) == ["one two three", "four five six"]
    report = distill(
        tiny_distill_config(tiny_teacher, tiny_data, tmp_path / "c", unlabeled=str(tsv))
    )
    key = json.loads(next((tmp_path / "c" / "cache").glob("depth*/teacher.json")).read_text())
    assert key["unlabeled"] == ["u.tsv", tsv.stat().st_size, True]
    assert report["prefix_accuracy"]


def test_bad_unlabeled_input_is_refused_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_unlabeled(tmp_path / "missing.tsv")
    bad = tmp_path / "b.tsv"
    bad.write_text("review\tstars\ngood\t5\n")
    with pytest.raises(DataError, match="'text'"):
        read_unlabeled(bad)
    with pytest.raises(ConfigError, match="no gold label"):
        DistillConfig(teacher="t", unlabeled=str(bad), w_ce=1.0)
    with pytest.raises(ConfigError, match="student_data"):
        DistillConfig(teacher="t", student_data="halves")


def test_patience_stops_when_dev_stalls_and_max_steps_caps_the_run():
    w = torch.nn.Parameter(torch.zeros(()))
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.9, 0.9, 0.9])
    result = train(
        [("w", w)],
        lambda b: (w - 1.0) ** 2,
        lambda e: list(range(10)),
        TrainConfig(epochs=8, lr=0.01, evals_per_epoch=2, patience=2),
        evaluate=lambda: next(scores),
    )
    # best at the 2nd evaluation, two worse ones after it: stop at the 4th (step 20)
    assert [h["score"] for h in result.history] == [0.5, 0.6, 0.55, 0.58]
    assert result.steps == 20
    capped = train([("w", w)], lambda b: (w - 1.0) ** 2, lambda e: list(range(10)),
                   TrainConfig(epochs=5, lr=0.01, max_steps=7))  # fmt: skip
    assert capped.steps == 7


def test_a_student_keeps_its_best_dev_weights_and_the_table_shows_disagreement(
    tmp_path, tiny_teacher, tiny_data, monkeypatch
):
    from shoal.distill.prefix import PrefixEvaluator
    from shoal.models.cohort import ShoalModel

    snapshots: list[dict[str, torch.Tensor]] = []
    real = PrefixEvaluator.dev_score

    def scored(self, k):
        real(self, k)  # runs as in a real run
        snapshots.append({n: p.clone() for n, p in self.model.students[k].state_dict().items()})
        return 0.9 if len(snapshots) % 3 == 1 else 0.1  # the first evaluation of each is best

    monkeypatch.setattr(PrefixEvaluator, "dev_score", scored)
    config = tiny_distill_config(
        tiny_teacher, tiny_data, tmp_path / "c", n_students=2, method="average",
        student_data="shards", augment=1,
        train=TrainConfig(epochs=3, lr=1e-3, batch_size=8, seed=0),
    )  # fmt: skip
    report = distill(config)
    assert len(snapshots) == 6  # three evaluations a student
    model = ShoalModel.from_pretrained(tmp_path / "c")
    for k in range(2):
        best, last = snapshots[3 * k], snapshots[3 * k + 2]
        saved = model.students[k].state_dict()
        assert all(torch.equal(saved[n], best[n]) for n in best)
        assert not all(torch.equal(saved[n], last[n]) for n in last)
    table = report["prefix_accuracy"]
    assert table[0]["dev_disagreement"] == 0.0
    assert 0.0 <= table[1]["dev_disagreement"] <= 1.0


def test_deeper_students_read_the_cache_of_shallower_ones_at_the_depth_they_are_given(
    tmp_path, tiny_data, monkeypatch
):
    from shoal.distill import teacher_outputs
    from shoal.models.cohort import ShoalModel
    from tiny_fixtures import make_teacher

    teacher = tmp_path / "teacher4"
    make_teacher(teacher, layers=4)
    passes: list[int] = []
    real = teacher_outputs.cache_teacher
    monkeypatch.setattr(
        teacher_outputs, "cache_teacher", lambda t, e, depth, *a: passes.append(depth) or
        real(t, e, depth, *a),
    )  # fmt: skip
    cache = tmp_path / "cache"

    def run(name: str, layers: int, **kw):
        distill(tiny_distill_config(teacher, tiny_data, tmp_path / name, n_students=1,
                                    student_layers=layers, cache_dir=str(cache), **kw))  # fmt: skip

    run("m2", 2, init="1,3")
    run("m3", 3, init="0,1,3", middle_depth=2)
    assert passes == [2]  # the 3-layer students read the 2-layer students' cache
    assert ShoalModel.from_pretrained(tmp_path / "m3").config.student_layers == 3
    run("m3-own", 3, init="0,2,3")  # in proportion: round(4 * 2 / 3) = 3
    assert passes == [2, 3]
    assert sorted(p.name for p in cache.glob("depth*")) == ["depth2", "depth3"]
    with pytest.raises(ConfigError, match=r"middle_depth=5, but the teacher has 4 layers"):
        run("deep", 3, middle_depth=5)
    assert not (tmp_path / "deep" / "model.safetensors").exists()
    with pytest.raises(ConfigError, match=r"middle_depth=-1 must be >= 0"):
        DistillConfig(teacher=str(teacher), middle_depth=-1)
