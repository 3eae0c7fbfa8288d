"""A 2-layer pre-norm causal Transformer encoder.

Causal like the SSM cores, so right-padding never reaches a real position and no mask is needed.
"""

from __future__ import annotations

import torch
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
