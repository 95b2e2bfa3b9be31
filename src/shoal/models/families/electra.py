"""ELECTRA: BERT's layers over embeddings of their own width, projected to the hidden size;
its head is dense + GELU + out_proj."""

from typing import Any

from torch import nn

from shoal.models.families.base import BERT_LAYER, Family, bert_like_config, copy_module


def _config(tc: Any) -> dict[str, Any]:
    fields = bert_like_config(tc)
    if tc.embedding_size != tc.hidden_size:
        fields["embedding_size"] = tc.embedding_size
    return fields


def _projection(teacher: nn.Module, cohort: nn.Module) -> None:
    theirs = getattr(teacher.electra, "embeddings_project", None)
    if theirs is not None:
        copy_module(cohort.embeddings.project, theirs)


ELECTRA = Family(
    model_type="electra",
    backbone="electra",
    layers="encoder.layer",
    layer_names=BERT_LAYER,
    head={"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
    head_activation="gelu",
    positions="absolute",
    config=_config,
    extra=_projection,
)
