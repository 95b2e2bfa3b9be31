"""Fused execution: the first k students as one batched computation per layer.

Every student's weights are stacked on a leading student axis, so one layer of k students is a
handful of batched matmuls (``bmm``) instead of k separate layers: the critical path is m
layers however many students run. All students read the same embeddings, so the first layer's
Q/K/V projection is one plain GEMM against the students' weights concatenated column-wise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shoal.models.layers import Student


class FusedStudents(nn.Module):
    """Stacked, read-only copy of N students' weights for inference.

    Shapes (N students, H hidden, I intermediate), per layer j:
        qkv_w (N, H, 3H) and for j = 0 also qkv0_w (H, N*3H), student-major column blocks;
        qkv_b (N, 1, 3H); out_w (N, H, H); ffn_in_w (N, H, I); ffn_out_w (N, I, H);
        biases and LayerNorm weights (N, 1, width).
    """

    def __init__(self, students: list[Student], dtype: torch.dtype | None = None) -> None:
        super().__init__()
        first = students[0].layers[0]
        self.n_students = len(students)
        self.n_layers = len(students[0].layers)
        self.heads = first.heads
        self.hidden = first.query.in_features
        self.eps = first.attn_norm.eps
        self.act_fn = first.act_fn
        dtype = dtype or first.query.weight.dtype
        for j in range(self.n_layers):
            layers = [s.layers[j] for s in students]

            def stack(get, transpose: bool = True, layers=layers) -> torch.Tensor:
                ts = [get(layer).detach() for layer in layers]
                ts = [t.t() if transpose else t[None, :] for t in ts]
                return torch.stack(ts).to(dtype).contiguous()

            qkv_w = (
                torch.stack(
                    [
                        torch.cat([la.query.weight, la.key.weight, la.value.weight]).t()
                        for la in layers
                    ]
                )
                .detach()
                .to(dtype)
                .contiguous()
            )
            qkv_b = (
                torch.stack(
                    [torch.cat([la.query.bias, la.key.bias, la.value.bias])[None] for la in layers]
                )
                .detach()
                .to(dtype)
                .contiguous()
            )
            self.register_buffer(f"qkv_w{j}", qkv_w, persistent=False)
            self.register_buffer(f"qkv_b{j}", qkv_b, persistent=False)
            if j == 0:
                # (N, H, 3H) -> (H, N*3H): slicing the first k*3H columns selects k students.
                cat = qkv_w.permute(1, 0, 2).reshape(self.hidden, -1).contiguous()
                self.register_buffer("qkv0_w", cat, persistent=False)
                self.register_buffer("qkv0_b", qkv_b.reshape(-1).contiguous(), persistent=False)
            for name, get, tr in [
                ("out_w", lambda la: la.attn_out.weight, True),
                ("out_b", lambda la: la.attn_out.bias, False),
                ("ln1_g", lambda la: la.attn_norm.weight, False),
                ("ln1_b", lambda la: la.attn_norm.bias, False),
                ("ffn_in_w", lambda la: la.ffn_in.weight, True),
                ("ffn_in_b", lambda la: la.ffn_in.bias, False),
                ("ffn_out_w", lambda la: la.ffn_out.weight, True),
                ("ffn_out_b", lambda la: la.ffn_out.bias, False),
                ("ln2_g", lambda la: la.ffn_norm.weight, False),
                ("ln2_b", lambda la: la.ffn_norm.bias, False),
            ]:
                self.register_buffer(f"{name}{j}", stack(get, tr), persistent=False)

    def _w(self, name: str, j: int, k: int) -> torch.Tensor:
        return getattr(self, f"{name}{j}")[:k]

    def _norm(self, x: torch.Tensor, j: int, which: str, k: int) -> torch.Tensor:
        y = F.layer_norm(x, (self.hidden,), eps=self.eps)
        return y * self._w(f"{which}_g", j, k) + self._w(f"{which}_b", j, k)

    def forward(
        self, emb: torch.Tensor, mask: torch.Tensor, k: int, *, cls_only: bool = True
    ) -> torch.Tensor:
        """Run the first k students on shared embeddings.

        Args:
            emb: (B, L, H) embeddings.
            mask: (B, 1, 1, L) additive attention mask, or (B, heads, L, L) with a relative
                position bias in it.
            cls_only: the last layer computes only the first token (what the head reads).
        Returns:
            (k, B, H) first-token states when ``cls_only``, else (k, B, L, H).
        """
        b, n, h = emb.shape
        heads, d = self.heads, h // self.heads
        emb = emb.to(self.qkv0_w.dtype)
        mask = mask.to(emb.dtype)
        kmask = mask.expand(b, -1, -1, n).repeat(k, 1, 1, 1)  # (k*B, 1 | heads, 1 | L, L)
        x = emb.reshape(1, b * n, h)  # broadcast over students until the first residual
        for j in range(self.n_layers):
            last_cls = cls_only and j == self.n_layers - 1
            if j == 0:
                qkv = torch.addmm(
                    self.qkv0_b[: k * 3 * h], emb.reshape(b * n, h), self.qkv0_w[:, : k * 3 * h]
                )
                qkv = qkv.view(b * n, k, 3 * h).transpose(0, 1)  # (k, B*L, 3H)
            else:
                qkv = torch.baddbmm(self._w("qkv_b", j, k), x, self._w("qkv_w", j, k))
            q, kk, v = qkv.reshape(k * b, n, 3, heads, d).unbind(2)  # each (k*B, L, heads, d)
            if last_cls:
                q = q[:, :1]
            att = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                kk.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=kmask[:, :, :1] if last_cls else kmask,
            )
            rows = 1 if last_cls else n
            att = att.transpose(1, 2).reshape(k, b * rows, h)
            resid = x.view(-1, b, n, h)[:, :, :1].reshape(-1, b, h) if last_cls else x
            y = torch.baddbmm(self._w("out_b", j, k), att, self._w("out_w", j, k))
            x = self._norm(resid + y, j, "ln1", k)  # (k, B*rows, H)
            y = torch.baddbmm(self._w("ffn_in_b", j, k), x, self._w("ffn_in_w", j, k))
            y = torch.baddbmm(
                self._w("ffn_out_b", j, k), self.act_fn(y), self._w("ffn_out_w", j, k)
            )
            x = self._norm(x + y, j, "ln2", k)
        return x.view(k, b, h) if cls_only else x.view(k, b, n, h)
