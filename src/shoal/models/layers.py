"""BERT building blocks with the Hugging Face BERT weight layout, so teacher layers copy over."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (BERT's embedding block)."""

    def __init__(
        self,
        vocab_size: int,
        hidden: int,
        max_positions: int,
        type_vocab: int,
        eps: float,
        pad_id: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) ids -> (B, L, H)."""
        n = input_ids.shape[1]
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence of {n} tokens exceeds the model's "
                f"{self.position_embeddings.num_embeddings} positions; truncate"
            )
        pos = torch.arange(n, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None]
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1/0 mask -> (B, 1, 1, L) additive mask: 0 to keep, a large negative to drop."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class Layer(nn.Module):
    """One post-LN transformer layer, parameter names as in Hugging Face ``BertLayer``."""

    def __init__(
        self, hidden: int, heads: int, intermediate: int, eps: float, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
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
        """(B, L, H) and additive (B, 1, 1, L) mask -> (B, L, H).

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
            attn_mask=mask,
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        att = att.transpose(1, 2).reshape(b, rows.shape[1], h)
        x = self.attn_norm(rows + self.dropout(self.attn_out(att)))
        y = self.ffn_out(F.gelu(self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(y))

    def load_hf(self, layer: nn.Module) -> None:
        """Copy the weights of a Hugging Face ``BertLayer``."""
        pairs = [
            (self.query, layer.attention.self.query),
            (self.key, layer.attention.self.key),
            (self.value, layer.attention.self.value),
            (self.attn_out, layer.attention.output.dense),
            (self.attn_norm, layer.attention.output.LayerNorm),
            (self.ffn_in, layer.intermediate.dense),
            (self.ffn_out, layer.output.dense),
            (self.ffn_norm, layer.output.LayerNorm),
        ]
        with torch.no_grad():
            for ours, theirs in pairs:
                ours.weight.copy_(theirs.weight)
                ours.bias.copy_(theirs.bias)


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
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Layer(hidden, heads, intermediate, eps, dropout) for _ in range(n_layers)
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
