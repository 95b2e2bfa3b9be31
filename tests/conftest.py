"""Shared fixtures: tiny random BERT teachers, a tiny tokenizer and synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Helpers live in tests/tiny_fixtures.py (a unique module name: several conftest.py exist).
sys.path.insert(0, str(Path(__file__).parent))

from tiny_fixtures import make_teacher, write_tsv_folder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    make_teacher(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tsv_folder(tmp_path_factory.mktemp("data") / "synth")


@pytest.fixture(scope="session")
def tiny_pair_data(tmp_path_factory) -> Path:
    return write_tsv_folder(tmp_path_factory.mktemp("pairdata") / "pairs", pair=True)


@pytest.fixture
def tiny_kernels_config(tiny_teacher, tmp_path):
    """``shoal bench kernels`` settings for a tiny teacher, 2 students, one thread, a few
    iterations on 4-word sentences; keyword arguments override. Restores torch's threads."""
    import torch

    from shoal.bench.offline import KernelsConfig

    data = tmp_path / "sst2.tsv"
    data.write_text("sentence\tlabel\n" + "".join("good movie bad plot\t1\n" for _ in range(8)))
    before = torch.get_num_threads()

    def make(**overrides) -> KernelsConfig:
        settings = {
            "out_dir": str(tmp_path),
            "teacher": str(tiny_teacher),
            "n_students": 2,
            "iters": 2,
            "large_iters": 1,
            "warmup": 1,
            "large_batch": 4,
            "data": str(data),
            "threads": (1,),
        }
        return KernelsConfig(**(settings | overrides))

    yield make
    torch.set_num_threads(before)
