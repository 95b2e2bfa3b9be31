"""DistilBERT: no segment embeddings, its own parameter names, and a head of pre_classifier +
ReLU + classifier."""

from typing import Any

from shoal.models.families.base import Family


def _config(tc: Any) -> dict[str, Any]:
    return {
        "vocab_size": tc.vocab_size,
        "hidden_size": tc.dim,
        "num_attention_heads": tc.n_heads,
        "intermediate_size": tc.hidden_dim,
        "max_position_embeddings": tc.max_position_embeddings,
        "type_vocab_size": 0,
        "layer_norm_eps": 1e-12,  # fixed in transformers' DistilBERT
        "pad_token_id": tc.pad_token_id or 0,
        "hidden_act": tc.activation,
    }


DISTILBERT = Family(
    model_type="distilbert",
    backbone="distilbert",
    layers="transformer.layer",
    layer_names={
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attn_out": "attention.out_lin",
        "attn_norm": "sa_layer_norm",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
        "ffn_norm": "output_layer_norm",
    },
    head={"pooler": "pre_classifier", "classifier": "classifier"},
    head_activation="relu",
    positions="absolute",
    config=_config,
)
