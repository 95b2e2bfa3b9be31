"""Plain data shared by every layer. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

SINGLE_LABEL = "single_label_classification"
"""The default ``problem_type`` (``shoal.problems`` holds the others)."""


@dataclass(frozen=True)
class TextDataset:
    """One split of a text-classification task.

    Invariants: ``len(texts) == len(labels)``; ``text_pairs`` is None for single-sentence
    tasks, otherwise as long as ``texts``; by ``problem_type`` (``shoal.problems``) every
    label is a class id in ``range(num_labels)``, a 0/1 tuple of ``num_labels`` entries
    (multi-label) or a float (regression, ``num_labels`` 1).
    """

    texts: list[str]
    labels: list[Any]
    text_pairs: list[str] | None = None
    num_labels: int = 2
    problem_type: str = SINGLE_LABEL

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int) -> TextDataset:
        """The first ``n`` examples (all when ``n`` is larger)."""
        pairs = None if self.text_pairs is None else self.text_pairs[:n]
        return replace(self, texts=self.texts[:n], labels=self.labels[:n], text_pairs=pairs)

    def min_words(self, n: int) -> TextDataset:
        """The examples whose text (both sides of a pair together) has at least ``n`` words."""

        def words(i: int) -> int:
            extra = 0 if self.text_pairs is None else len(self.text_pairs[i].split())
            return len(self.texts[i].split()) + extra

        keep = [i for i in range(len(self)) if words(i) >= n]
        return self.select(keep)

    def select(self, index: list[int]) -> TextDataset:
        """The examples at ``index``, in that order."""
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in index]
        return replace(
            self,
            texts=[self.texts[i] for i in index],
            labels=[self.labels[i] for i in index],
            text_pairs=pairs,
        )

    def extended(
        self, texts: list[str], labels: list[Any], pairs: list[str] | None = None
    ) -> TextDataset:
        """This split followed by more examples of the same task."""
        if (pairs is None) != (self.text_pairs is None):
            raise ValueError("extend a pair task with pairs and a single-text task without")
        joined = None if self.text_pairs is None else self.text_pairs + (pairs or [])
        return replace(
            self, texts=self.texts + texts, labels=self.labels + labels, text_pairs=joined
        )

    def placeholder_label(self) -> Any:
        """A label for texts the teacher labels (never trained on as a gold label)."""
        if self.problem_type == SINGLE_LABEL:
            return 0
        return 0.0 if self.problem_type == "regression" else (0,) * self.num_labels


@dataclass(frozen=True)
class Task:
    """A task: its splits by name ('train', 'dev', 'test') and label names."""

    name: str
    splits: dict[str, TextDataset]
    label_names: list[str] = field(default_factory=list)

    @property
    def problem_type(self) -> str:
        return next(iter(self.splits.values())).problem_type

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
