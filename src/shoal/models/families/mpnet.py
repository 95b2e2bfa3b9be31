"""MPNet: BERT-shaped layers under other names, fairseq positions, no segments, and one
relative position bias (32 buckets per head) shared by every layer, which the cohort shares
by every student; the head is dense + tanh + out_proj."""

from typing import Any

from torch import nn

from shoal.models.families.base import Family, bert_like_config, copy_module


def _config(tc: Any) -> dict[str, Any]:
    fields = bert_like_config(tc)
    fields["type_vocab_size"] = 0
    fields["pad_token_id"] = 1  # transformers' MPNetEmbeddings fixes its padding index at 1
    fields["relative_attention_num_buckets"] = tc.relative_attention_num_buckets
    return fields


def _position_bias(teacher: nn.Module, cohort: nn.Module) -> None:
    copy_module(cohort.relative_attention_bias, teacher.mpnet.encoder.relative_attention_bias)


MPNET = Family(
    model_type="mpnet",
    backbone="mpnet",
    layers="encoder.layer",
    layer_names={
        "query": "attention.attn.q",
        "key": "attention.attn.k",
        "value": "attention.attn.v",
        "attn_out": "attention.attn.o",
        "attn_norm": "attention.LayerNorm",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "ffn_norm": "output.LayerNorm",
    },
    head={"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
    head_activation="tanh",
    positions="padded",
    config=_config,
    extra=_position_bias,
)
