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
