"""A cohort folder on disk, read without loading weights (no torch here).

``ShoalModel.save_pretrained`` writes ``config.json`` (the ``ShoalConfig``, ``model_type``
'shoal-cohort'), ``model.safetensors``, the tokenizer and ``shoal_meta.json`` (the prefix
accuracy table, label names, training times). The server, ``shoal eval`` and the benchmarks read
the JSON files and the tokenizer before, or instead of, the weights. ``is_cohort`` says whether a
folder holds a cohort (its config names ``model_type`` 'shoal-cohort'); ``read_config``,
``read_meta`` and ``read_cohort`` also check every field Shoal reads by type and range
(``cohort_schema``), and ``read_cohort`` the weights' shapes against the config from the
safetensors header (``cohort_weights``), so a damaged folder fails in one line before anything
is allocated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoal.errors import ModelError
from shoal.models.cohort_schema import check_config, check_meta, check_pair
from shoal.models.cohort_weights import check_weights

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
META_NAME = "shoal_meta.json"
MODEL_TYPE = "shoal-cohort"


def read_config(folder: str | Path) -> dict[str, Any]:
    """The cohort's ``config.json`` as a dict, checked, with ``ShoalConfig``'s defaults filled.

    Raises:
        ModelError: the file is missing or unreadable, or names another ``model_type``.
        CohortFileError: a field has the wrong type or range (a ``ModelError``).
    """
    return check_config(_claimed_config(folder), Path(folder) / CONFIG_NAME)


def _claimed_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` as written, if it names the cohort ``model_type``."""
    path = Path(folder)
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(
            f"{path} is not a Shoal cohort ({e}); create one with `shoal distill`"
        ) from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise ModelError(
            f"{path} holds a {model_type!r} model, not a Shoal cohort; distil it first "
            f"with `shoal distill --teacher {path}`"
        )
    return config


def is_cohort(folder: str | Path) -> bool:
    """Whether ``folder`` holds a Shoal cohort: a JSON ``config.json`` naming ``model_type``
    'shoal-cohort', usable or not (``read_config`` says what is wrong with one that is not)."""
    try:
        _claimed_config(folder)
    except ModelError:
        return False
    return True


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The cohort's ``shoal_meta.json``, checked on its own; {} when the folder has none.

    Raises:
        ModelError: the file is not a JSON object.
        CohortFileError: a field has the wrong type or range (a ``ModelError``).
    """
    meta_path = Path(folder) / META_NAME
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(
            f"{meta_path} is not valid JSON ({e}); restore it from the `shoal distill` "
            "output, or delete it to serve without stored accuracy"
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(
            f"{meta_path} holds a {type(meta).__name__}, not a JSON object; restore it"
        )
    check_meta(meta, meta_path)
    return meta


def read_cohort(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and ``shoal_meta.json`` of a cohort folder, each checked, checked against
    each other, and (when the folder has ``model.safetensors``) against the weights' header;
    no weights are loaded.

    Raises:
        ModelError: a file is missing, unreadable or not JSON.
        CohortFileError: a field is wrong, the files disagree, or the weights' shapes are not
            those the config describes.
    """
    path = Path(folder)
    config, meta = read_config(path), read_meta(path)
    check_pair(config, meta, path / META_NAME)
    if (path / WEIGHTS_NAME).is_file():
        check_weights(path / WEIGHTS_NAME, config, path / CONFIG_NAME)
    return config, meta


def label_names(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Label names by class id: the meta's ``label_names`` if they fit ``num_labels``, else
    the config's ``id2label`` (``LABEL_i`` where it has none)."""
    n = int(config.get("num_labels", 2))
    names = meta.get("label_names")
    if names and len(names) == n:
        return [str(x) for x in names]
    id2label = config.get("id2label") or {}
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(n)]


def prefix_accuracy(
    meta: dict[str, Any], n_students: int, split: str, metric: str = "accuracy"
) -> tuple[float, ...]:
    """Stored score (``metric``: the task's, ``shoal.problems.PRIMARY``) of each prefix
    k = 1..N on ``split``; () if any is missing."""
    rows = {
        int(r["k"]): r.get(f"{split}_{metric}")
        for r in meta.get("prefix_accuracy", [])
        if isinstance(r, dict) and "k" in r
    }
    values = [rows.get(k) for k in range(1, n_students + 1)]
    if any(v is None for v in values):
        return ()
    return tuple(float(v) for v in values)  # type: ignore[arg-type]


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved with the cohort, never running code the folder ships
    (``trust_remote_code=False``: an ``auto_map`` in its config is refused, not imported).
    transformers does not know the cohort's ``model_type`` and warns about it on every load;
    the warning is noise here."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{folder} has no usable tokenizer ({e}); save one with the "
            "cohort (ShoalModel.save_pretrained(folder, tokenizer))"
        ) from None
    finally:
        hf_logging.set_verbosity(level)
