"""The command line: fine-tune, distil and evaluate on tiny models; clear errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shoal.cli import app

runner = CliRunner()


def _json_tail(output: str) -> dict:
    return json.loads(output[output.index("{") :])


def test_finetune_distill_eval(tmp_path, tiny_teacher, tiny_data):
    r = runner.invoke(
        app,
        [
            "finetune",
            "--model",
            str(tiny_teacher),
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "t"),
            "--epochs",
            "1",
            "--lr",
            "1e-3",
            "--max-length",
            "32",
            "--evals-per-epoch",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    report = _json_tail(r.stdout)
    assert 0 <= report["test"]["accuracy"] <= 1
    assert (tmp_path / "t" / "config.json").is_file()
    r = runner.invoke(
        app,
        [
            "distill",
            "--teacher",
            str(tmp_path / "t"),
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "c"),
            "--students",
            "2",
            "--max-length",
            "32",
            "--lr",
            "1e-3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "distill_config.json").is_file()
    assert (tmp_path / "c" / "README.md").is_file()  # the model card
    r = runner.invoke(app, ["eval", str(tmp_path / "c"), "--data", str(tiny_data), "--k", "1"])
    assert r.exit_code == 0, r.output
    fp32 = _json_tail(r.stdout)
    assert fp32["k"] == 1 and fp32["dtype"] == "float32"
    # every prefix from one pass of the students scores as a run with that k does
    r = runner.invoke(app, ["eval", str(tmp_path / "c"), "--data", str(tiny_data), "--by-k"])
    assert r.exit_code == 0, r.output
    by_k = _json_tail(r.stdout)["by_k"]
    assert [row["k"] for row in by_k] == [1, 2]
    assert by_k[0]["accuracy"] == fp32["accuracy"] and by_k[0]["f1"] == fp32["f1"]
    r = runner.invoke(app, ["eval", str(tmp_path / "c"), "--data", str(tiny_data), "--k", "2"])
    assert _json_tail(r.stdout)["accuracy"] == by_k[1]["accuracy"]
    r = runner.invoke(app, ["eval", str(tmp_path / "t"), "--data", str(tiny_data), "--by-k"])
    assert r.exit_code == 2 and "not a cohort" in r.output
    # the cohort as an int8 ONNX Runtime server would run it
    r = runner.invoke(
        app,
        ["eval", str(tmp_path / "c"), "--data", str(tiny_data), "--k", "1"]
        + ["--backend", "onnxruntime", "--dtype", "int8"],
    )
    assert r.exit_code == 0, r.output
    int8 = _json_tail(r.stdout)
    assert (int8["backend"], int8["dtype"]) == ("onnxruntime", "int8")
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 2 / int8["examples"]
    r = runner.invoke(
        app, ["eval", str(tmp_path / "c"), "--data", str(tiny_data), "--dtype", "int8"]
    )
    assert r.exit_code == 2 and "add --backend onnxruntime" in r.output
    r = runner.invoke(
        app, ["eval", str(tmp_path / "t"), "--data", str(tiny_data), "--dtype", "int8"]
    )
    assert r.exit_code == 2 and "is a teacher" in r.output


def test_errors_are_one_line_messages(tmp_path, tiny_teacher, tiny_data):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence\tlabel\nhi\tyes\n")
    r = runner.invoke(app, ["finetune", "--model", str(tiny_teacher), "--data", str(bad)])
    assert r.exit_code == 2
    assert "not an integer" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["eval", str(tmp_path), "--data", str(tiny_data)])
    assert r.exit_code == 2 and "not a model checkpoint" in r.output
    r = runner.invoke(
        app,
        [
            "distill",
            "--teacher",
            str(tiny_teacher),
            "--data",
            str(tiny_data),
            "--method",
            "magic",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 2 and "method='magic' is unknown" in r.output
    r = runner.invoke(
        app, ["finetune", "--model", str(tiny_teacher), "--data", str(tiny_data), "--device", "gpu"]
    )
    assert r.exit_code == 2 and "device='gpu' is not a device" in r.output
    assert "Traceback" not in r.output


def test_finetune_selects_on_long_dev_examples(tmp_path, tiny_teacher, tiny_data):
    common = ["finetune", "--model", str(tiny_teacher), "--data", str(tiny_data)]
    common += ["--epochs", "1", "--lr", "1e-3", "--max-length", "32", "--evals-per-epoch", "1"]
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "t"), "--select-min-words", "6"])
    assert r.exit_code == 0, r.output
    selection = _json_tail(r.stdout)["selection"]
    dev = (tiny_data / "dev.tsv").read_text().splitlines()[1:]
    long_dev = [row for row in dev if len(row.split("\t")[0].split()) >= 6]
    assert selection["examples"] == len(long_dev) > 0
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "u"), "--select-min-words", "99"])
    assert r.exit_code == 2 and "no dev example has 99 or more words" in r.output


def test_finetune_from_a_teacher_on_augmented_copies(tmp_path, tiny_teacher, tiny_data):
    common = ["finetune", "--model", str(tiny_teacher), "--data", str(tiny_data)]
    common += ["--epochs", "1", "--lr", "1e-3", "--max-length", "32", "--evals-per-epoch", "1"]
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "a"), "--augment", "2"])
    assert r.exit_code == 2 and "pass --distill-from TEACHER" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(
        app,
        [*common, "--out", str(tmp_path / "b"), "--augment", "2"]
        + ["--distill-from", str(tiny_teacher), "--w-ce", "0.5", "--temperature", "2"],
    )
    assert r.exit_code == 0, r.output
    report = _json_tail(r.stdout)
    assert report["distill_from"] == str(tiny_teacher)
    assert report["train_examples"] > report["gold_examples"]
    assert report["teacher_outputs"] == str(tmp_path / "b" / "cache" / "logits")
    saved = json.loads((tmp_path / "b" / "shoal_finetune.json").read_text())["config"]
    assert (saved["augment"], saved["w_ce"], saved["temperature"]) == (2, 0.5, 2.0)


def test_finetune_maps_rdrop_and_train_min_words(tmp_path, tiny_teacher, tiny_data):
    common = ["finetune", "--model", str(tiny_teacher), "--data", str(tiny_data)]
    common += ["--epochs", "1", "--lr", "1e-3", "--max-length", "32", "--evals-per-epoch", "1"]
    r = runner.invoke(
        app, [*common, "--out", str(tmp_path / "t"), "--train-min-words", "8", "--rdrop", "0.5"]
    )
    assert r.exit_code == 0, r.output
    train = (tiny_data / "train.tsv").read_text().splitlines()[1:]
    long = [row for row in train if len(row.split("\t")[0].split()) >= 8]
    assert _json_tail(r.stdout)["train_examples"] == len(long) > 0
    saved = json.loads((tmp_path / "t" / "shoal_finetune.json").read_text())["config"]
    assert (saved["train_min_words"], saved["rdrop"]) == (8, 0.5)
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "u"), "--rdrop", "-1"])
    assert r.exit_code == 2 and "rdrop=-1.0 must be >= 0" in r.output
    assert "Traceback" not in r.output


def test_eval_scores_the_long_examples_only(tmp_path, tiny_teacher, tiny_data):
    rows = (tiny_data / "test.tsv").read_text().splitlines()
    long = [row for row in rows[1:] if len(row.split("\t")[0].split()) >= 8]
    only_long = tmp_path / "only-long"
    only_long.mkdir()
    (only_long / "test.tsv").write_text("\n".join([rows[0], *long]) + "\n")
    common = ["eval", str(tiny_teacher), "--max-length", "32"]
    r = runner.invoke(app, [*common, "--data", str(tiny_data), "--min-words", "8"])
    assert r.exit_code == 0, r.output
    result = _json_tail(r.stdout)
    assert 0 < result["examples"] == len(long) < len(rows) - 1
    reference = _json_tail(runner.invoke(app, [*common, "--data", str(only_long)]).stdout)
    assert result["accuracy"] == reference["accuracy"]
    r = runner.invoke(app, [*common, "--data", str(tiny_data), "--min-words", "99"])
    assert r.exit_code == 2 and "no test example has 99 or more words" in r.output
    assert "Traceback" not in r.output


def test_distill_compose_flag_reaches_the_config(tmp_path, tiny_teacher, tiny_data):
    common = ["distill", "--teacher", str(tiny_teacher), "--data", str(tiny_data)]
    common += ["--students", "1", "--max-length", "32", "--compose", "1"]
    r = runner.invoke(app, [*common, "--w-ce", "0.5", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "combined with augment or compose" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "distill_config.json").read_text())["compose"] == 1
