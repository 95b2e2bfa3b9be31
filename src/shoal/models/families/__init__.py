"""Teacher families: what the cohort needs from a Hugging Face classifier of each family.

One module per family, one registry keyed by the checkpoint's ``model_type``. A family says
where the backbone and its layers are, how its embeddings place positions and segments, how its
layer weights map onto the students' :class:`~shoal.models.layers.Layer`, and what its
classification head computes; :meth:`ShoalModel.from_teacher` does the rest the same way for
every family. Tokenisation needs nothing here: a cohort keeps the teacher's own tokenizer, with
its special tokens and its pair format.
"""

from __future__ import annotations

from shoal.errors import ModelError
from shoal.models.families.base import Family
from shoal.models.families.bert import BERT
from shoal.models.families.distilbert import DISTILBERT
from shoal.models.families.electra import ELECTRA
from shoal.models.families.mpnet import MPNET
from shoal.models.families.roberta import ROBERTA, XLM_ROBERTA

FAMILIES: dict[str, Family] = {
    f.model_type: f for f in (BERT, ROBERTA, XLM_ROBERTA, DISTILBERT, ELECTRA, MPNET)
}

__all__ = ["FAMILIES", "Family", "family_of"]

_NOT_YET = {
    "deberta": "relative attention with separate content and position projections",
    "deberta-v2": "relative attention with separate content and position projections",
    "albert": "one layer's weights shared by every layer, and factorised embeddings",
}


def family_of(model_type: str | None) -> Family:
    """The family of a checkpoint's ``model_type``; one clear error for any other."""
    family = FAMILIES.get(str(model_type))
    if family is not None:
        return family
    names = ", ".join(sorted(FAMILIES))
    why = (
        f" ({_NOT_YET[str(model_type)]} has no student layout yet)"
        if model_type in _NOT_YET
        else ""
    )
    raise ModelError(
        f"model_type {model_type!r} is not a supported teacher family{why}; Shoal distils "
        f"{names} classifiers: fine-tune one of those (`shoal finetune --model ...`)"
    )
