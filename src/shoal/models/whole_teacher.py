"""A fine-tuned Hugging Face classifier served as it is: a cohort of one student that copies
every layer of it (``ShoalModel.from_teacher`` with the full layer plan), so its logits are
the classifier's own (to float32 rounding) and the server, its API, metrics and limits treat
it like any cohort. It has one student, so there is nothing to prune.

This is what ``shoal serve TEACHER_FOLDER`` runs: the teacher as a fallback beside its
cohort, or as the baseline of an A/B test on one API.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from shoal.errors import ModelError


def is_classifier(folder: str | Path) -> bool:
    """Whether ``folder`` holds a fine-tuned Hugging Face sequence classifier (a config whose
    architectures name a ``...ForSequenceClassification``)."""
    from shoal.models.teacher import _config

    if not (Path(folder) / "config.json").is_file():
        return False
    try:
        return _config(folder)[1]
    except ModelError:
        return False


def write_cohort(teacher_dir: str | Path, out: str | Path) -> Path:
    """Save the classifier in ``teacher_dir`` as a one-student cohort of its full depth in
    ``out``; return ``out``. Raises ModelError for a folder that is not a classifier of a
    supported family."""
    from shoal.models.cohort import ShoalModel
    from shoal.models.families import family_of
    from shoal.models.teacher import load_teacher

    teacher, tok = load_teacher(teacher_dir)
    depth = len(family_of(teacher.config.model_type).teacher_layers(teacher))
    model = ShoalModel.from_teacher(teacher, 1, depth, [list(range(depth))]).eval()
    id2label = teacher.config.id2label
    model.meta = {
        "label_names": [str(id2label[i]) for i in range(teacher.config.num_labels)],
        "teacher": str(teacher_dir),
        "prefix_accuracy": [],
    }
    model.save_pretrained(Path(out), tok)
    return Path(out)


@contextlib.contextmanager
def served_folder(folder: str | Path) -> Iterator[Path]:
    """The cohort folder to serve for ``folder``: itself when it is a cohort; for a fine-tuned
    classifier, its one-student cohort, written to a temporary folder of the same name that
    is removed on exit."""
    from shoal.models.cohort_folder import is_cohort

    path = Path(folder)
    if is_cohort(path) or not is_classifier(path):
        yield path  # a cohort, or not a model at all: reading it as a cohort says what is wrong
        return
    with tempfile.TemporaryDirectory(prefix="shoal-teacher-") as tmp:
        yield write_cohort(path, Path(tmp) / (path.resolve().name or "teacher"))
