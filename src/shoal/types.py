"""Plain data shared by every layer. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextDataset:
    """One split of a text-classification task.

    Invariants: ``len(texts) == len(labels)``; ``text_pairs`` is None for single-sentence
    tasks, otherwise as long as ``texts``; every label is in ``range(num_labels)``.
    """

    texts: list[str]
    labels: list[int]
    text_pairs: list[str] | None = None
    num_labels: int = 2

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int) -> TextDataset:
        """The first ``n`` examples (all when ``n`` is larger)."""
        pairs = None if self.text_pairs is None else self.text_pairs[:n]
        return TextDataset(self.texts[:n], self.labels[:n], pairs, self.num_labels)

    def min_words(self, n: int) -> TextDataset:
        """The examples whose text (both sides of a pair together) has at least ``n`` words."""

        def words(i: int) -> int:
            extra = 0 if self.text_pairs is None else len(self.text_pairs[i].split())
            return len(self.texts[i].split()) + extra

        keep = [i for i in range(len(self)) if words(i) >= n]
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in keep]
        return TextDataset(
            [self.texts[i] for i in keep], [self.labels[i] for i in keep], pairs, self.num_labels
        )


@dataclass(frozen=True)
class Task:
    """A task: its splits by name ('train', 'dev', 'test') and label names."""

    name: str
    splits: dict[str, TextDataset]
    label_names: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return next(iter(self.splits.values())).text_pairs is not None


@dataclass(frozen=True)
class PrefixAccuracy:
    """Accuracy of the ensemble that uses the first ``k`` students, per split (0..1)."""

    k: int
    dev: float | None
    test: float | None
    dev_f1: float | None = None
    test_f1: float | None = None


def token_limit(model_config: dict[str, Any]) -> int:
    """The longest input a cohort config (``config.json`` as a dict) takes: its position table,
    less the positions that padded numbering (RoBERTa, XLM-R, MPNet) never uses."""
    positions = int(model_config.get("max_position_embeddings", 512))
    if model_config.get("positions") == "padded":
        positions -= int(model_config.get("pad_token_id", 0)) + 1
    return positions
