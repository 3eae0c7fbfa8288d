"""A 2-layer pre-norm causal Transformer encoder.

Causal like the SSM cores, so right-padding never reaches a real position and no mask is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TransformerCore(nn.Module):
    def __init__(self, d_model: int, n_layers: int = 2, head_dim: int = 64):
        super().__init__()
        n_heads = max(1, d_model // head_dim)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.out_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=x.dtype)
        return self.out_proj(self.norm(self.encoder(x, mask=causal, is_causal=True)))  # (B, T, d)

    def remember(self, x: torch.Tensor, last: torch.Tensor) -> dict:
        """loop_span=answer: every layer's keys and values at positions < last (B,), from one causal pass."""
        T = x.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=x.dtype)
        keys, values, h = [], [], x
        for layer in self.encoder.layers:
            k, v = _project(layer, layer.norm1(h))[1:]
            keys.append(k)
            values.append(v)
            h = layer(h, src_mask=causal, is_causal=True)
        before = torch.arange(T, device=x.device)[None, :] < last[:, None]  # (B, T)
        return {"keys": keys, "values": values, "before": before}

    def recall(self, memory: dict, a: torch.Tensor) -> torch.Tensor:
        """The update at the answer position for its input a (B, d): it attends to the remembered positions and
        itself, as position `last` of `forward` does."""
        B = a.shape[0]
        h = a
        for layer, k_mem, v_mem in zip(self.encoder.layers, memory["keys"], memory["values"]):
            attn = layer.self_attn
            q, k, v = _project(layer, layer.norm1(h)[:, None])  # (B, heads, 1, head_dim)
            keys, values = torch.cat([k_mem, k], 2), torch.cat([v_mem, v], 2)  # (B, heads, T + 1, head_dim)
            mask = F.pad(memory["before"], (0, 1), value=True)[:, None, None]  # (B, 1, 1, T + 1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, heads, 1, head_dim)
            h = h + attn.out_proj(out.transpose(1, 2).reshape(B, -1))
            h = h + layer._ff_block(layer.norm2(h))
        return self.out_proj(self.norm(h))


def _project(layer: nn.TransformerEncoderLayer, h: torch.Tensor):
    """The layer's own query, key and value projections of h (B, T, d), split into heads (B, heads, T, head_dim)."""
    attn = layer.self_attn
    B, T, d = h.shape
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
    return [t.view(B, T, attn.num_heads, d // attn.num_heads).transpose(1, 2) for t in (q, k, v)]
