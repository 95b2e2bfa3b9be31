"""The students' building blocks: BERT-shaped post-LN layers that every supported teacher
family's layers copy into (``shoal.models.families``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
"""Activations by their Hugging Face ``hidden_act`` names (those the supported families use)."""


def activation(name: str):
    """The function of an activation name; refuses names the students do not implement."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}") from None


class Embeddings(nn.Module):
    """Word + position (+ token-type) embeddings, then LayerNorm (BERT's embedding block).

    ``positions='padded'`` numbers the tokens from ``pad_id + 1`` and gives padding the pad
    id (RoBERTa, XLM-R and MPNet, after fairseq); ``type_vocab=0`` has no segment table
    (DistilBERT, MPNet); ``embedding_size`` narrower than ``hidden`` adds ELECTRA's projection.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        max_positions: int,
        type_vocab: int,
        eps: float,
        pad_id: int,
        dropout: float = 0.1,
        *,
        positions: str = "absolute",
        embedding_size: int | None = None,
    ) -> None:
        super().__init__()
        width = embedding_size or hidden
        self.positions = positions
        self.pad_id = pad_id
        self.word_embeddings = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.token_type_embeddings = nn.Embedding(type_vocab, width) if type_vocab else None
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(width, hidden) if width != hidden else None

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) ids -> (B, L, H)."""
        n = input_ids.shape[1]
        offset = self.pad_id + 1 if self.positions == "padded" else 0
        if n + offset > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence of {n} tokens exceeds the model's "
                f"{self.position_embeddings.num_embeddings - offset} positions; truncate"
            )
        if self.positions == "padded":
            keep = (
                input_ids.ne(self.pad_id) if attention_mask is None else attention_mask.ne(0)
            ).long()
            pos = torch.cumsum(keep, dim=1) * keep + self.pad_id
            x = self.word_embeddings(input_ids) + self.position_embeddings(pos)
        else:
            pos = torch.arange(n, device=input_ids.device)
            x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None]
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.LayerNorm(x))
        return x if self.project is None else self.project(x)


class RelativePositionBias(nn.Module):
    """MPNet's relative position bias: one learnt scalar per head and distance bucket, added to
    every layer's attention scores (T5's bucketing: exact distances up to a quarter of the
    buckets each way, logarithmic up to ``max_distance``)."""

    def __init__(self, buckets: int, heads: int, max_distance: int = 128) -> None:
        super().__init__()
        self.buckets = buckets
        self.max_distance = max_distance
        self.weight = nn.Parameter(torch.zeros(buckets, heads))

    def forward(self, n: int) -> torch.Tensor:
        """(1, heads, L, L) bias for a sequence of ``n`` tokens."""
        pos = torch.arange(n, device=self.weight.device)
        rel = pos[None, :] - pos[:, None]  # memory - context
        half = self.buckets // 2
        exact = half // 2
        dist = -rel
        bucket = (dist < 0).long() * half
        dist = dist.abs()
        large = (
            exact
            + (
                torch.log(dist.float().clamp(min=1) / exact)
                / math.log(self.max_distance / exact)
                * (half - exact)
            ).long()
        )
        large = large.clamp(max=half - 1)
        bucket = bucket + torch.where(dist < exact, dist, large)
        return F.embedding(bucket, self.weight).permute(2, 0, 1)[None]


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1/0 mask -> (B, 1, 1, L) additive mask: 0 to keep, a large negative to drop."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Layer(nn.Module):
    """One post-LN transformer layer, parameter names as in Hugging Face ``BertLayer``."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        intermediate: int,
        eps: float,
        dropout: float = 0.1,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        self.act = act
        self.act_fn = activation(act)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, *, first_only: bool = False
    ) -> torch.Tensor:
        """(B, L, H) and additive mask -> (B, L, H).

        The mask is (B, 1, 1, L), or (B, heads, L, L) with a relative position bias in it.
        With ``first_only`` only the first token is computed (its keys and values still cover
        every token): (B, L, H) -> (B, 1, H), what a head that reads [CLS] needs of a last layer.
        """
        b, n, h = x.shape
        d = h // self.heads
        rows = x[:, :1] if first_only else x

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, R, H) -> (B, heads, R, d)
            return t.view(b, -1, self.heads, d).transpose(1, 2)

        att = F.scaled_dot_product_attention(
            split(self.query(rows)),
            split(self.key(x)),
            split(self.value(x)),
            attn_mask=mask[:, :, :1] if first_only else mask,
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        att = att.transpose(1, 2).reshape(b, rows.shape[1], h)
        x = self.attn_norm(rows + self.dropout(self.attn_out(att)))
        y = self.ffn_out(self.act_fn(self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(y))


class Student(nn.Module):
    """``m`` layers over the shared embeddings; returns every layer's hidden states."""

    def __init__(
        self,
        n_layers: int,
        hidden: int,
        heads: int,
        intermediate: int,
        eps: float,
        dropout: float = 0.1,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Layer(hidden, heads, intermediate, eps, dropout, act) for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """(B, L, H) -> [m tensors of (B, L, H)], one per layer; the last is the output."""
        states = []
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x)
        return states

    def first_token(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, H): the output's first token, the last layer computing only it."""
        for layer in self.layers[:-1]:
            x = layer(x, mask)
        return self.layers[-1](x, mask, first_only=True)[:, 0]
