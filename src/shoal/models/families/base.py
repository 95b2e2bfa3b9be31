"""What a teacher family tells the cohort code (see :mod:`shoal.models.families`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from shoal.errors import ModelError

# ours -> theirs, relative to one teacher layer; every pair is a Linear or a LayerNorm.
LayerNames = dict[str, str]

BERT_LAYER: LayerNames = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def module_at(root: nn.Module, path: str) -> Any:
    """``root.a.b.c`` for the dotted path 'a.b.c' (None where a part is missing)."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass(frozen=True)
class Family:
    """How one Hugging Face family lays out a sequence classifier.

    Attributes:
        model_type: the ``model_type`` of its configs.
        backbone: attribute of the classifier that holds the encoder model.
        layers: path, under the backbone, of the list of transformer layers.
        layer_names: our layer's parameter blocks -> the teacher layer's modules.
        head: our head's ``pooler`` and ``classifier`` -> modules of the classifier (the
            pooler may be missing in a checkpoint, e.g. BERT built without one).
        head_activation: between the head's dense layer and its output ('tanh', 'gelu',
            'relu').
        positions: 'absolute' (0..L-1) or 'padded' (the pad id + 1 onwards, fairseq-style).
        config: the teacher config -> the shape fields of ``ShoalConfig``.
        extra: copies what else the family has (ELECTRA's projection, MPNet's relative
            position bias) from the teacher into the cohort.
    """

    model_type: str
    backbone: str
    layers: str
    layer_names: LayerNames
    head: dict[str, str]
    head_activation: str
    positions: str
    config: Callable[[Any], dict[str, Any]]
    extra: Callable[[nn.Module, nn.Module], None] | None = None
    embedding_names: dict[str, str] = field(
        default_factory=lambda: {
            "word_embeddings": "embeddings.word_embeddings",
            "position_embeddings": "embeddings.position_embeddings",
            "token_type_embeddings": "embeddings.token_type_embeddings",
            "LayerNorm": "embeddings.LayerNorm",
        }
    )

    def backbone_of(self, teacher: nn.Module) -> nn.Module:
        model = getattr(teacher, self.backbone, None)
        if model is None:
            raise ModelError(
                f"{type(teacher).__name__} has no .{self.backbone}: not a {self.model_type} "
                "sequence classifier as transformers builds one"
            )
        return model

    def teacher_layers(self, teacher: nn.Module) -> list[nn.Module]:
        layers = module_at(self.backbone_of(teacher), self.layers)
        if layers is None:
            raise ModelError(f"{type(teacher).__name__} has no {self.backbone}.{self.layers}")
        return list(layers)

    def copy_embeddings(self, teacher: nn.Module, ours: nn.Module) -> None:
        base = self.backbone_of(teacher)
        for name, path in self.embedding_names.items():
            theirs = module_at(base, path)
            mine = getattr(ours, name, None)
            if theirs is not None and mine is not None:
                copy_module(mine, theirs)

    def copy_layer(self, teacher_layer: nn.Module, ours: nn.Module) -> None:
        for name, path in self.layer_names.items():
            theirs = module_at(teacher_layer, path)
            if theirs is None:
                raise ModelError(f"teacher layer {type(teacher_layer).__name__} has no {path}")
            copy_module(getattr(ours, name), theirs)

    def copy_head(self, teacher: nn.Module, ours: nn.Module) -> None:
        for name, path in self.head.items():
            theirs = module_at(teacher, path)
            if theirs is not None:
                copy_module(getattr(ours, name), theirs)


def copy_module(ours: nn.Module, theirs: nn.Module) -> None:
    """Copy weight and bias (a Linear, LayerNorm or Embedding) of the same shape."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            src, dst = getattr(theirs, name, None), getattr(ours, name, None)
            if src is None or dst is None:
                continue
            if src.shape != dst.shape:
                raise ModelError(
                    f"{type(theirs).__name__}.{name} is {tuple(src.shape)} but the student's "
                    f"is {tuple(dst.shape)}"
                )
            dst.copy_(src)


def bert_like_config(tc: Any) -> dict[str, Any]:
    """The shape fields of a config that uses BERT's names."""
    return {
        "vocab_size": tc.vocab_size,
        "hidden_size": tc.hidden_size,
        "num_attention_heads": tc.num_attention_heads,
        "intermediate_size": tc.intermediate_size,
        "max_position_embeddings": tc.max_position_embeddings,
        "type_vocab_size": getattr(tc, "type_vocab_size", 0) or 0,
        "layer_norm_eps": tc.layer_norm_eps,
        "pad_token_id": tc.pad_token_id or 0,
        "hidden_act": tc.hidden_act,
    }
