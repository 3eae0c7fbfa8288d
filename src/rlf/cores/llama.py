"""Two Llama blocks (transformers' `LlamaDecoderLayer`: RMSNorm, causal attention with rotary positions over the
prompt, SiLU MLP), a final norm and a zero-initialised output projection.

The `transformer` core's attention has no positions of its own: it must find "the token two before me" from the
base encoding's implicit position. Rotary positions make such relative lookups (a statement's right-hand side
reading its left-hand side) a matter of one attention head.
"""

from __future__ import annotations

import torch
from torch import nn

from rlf.base import BaseLayers

N_LAYERS, HEAD_DIM = 2, 64


class LlamaCore(nn.Module):
    def __init__(self, d_model: int, n_layers: int = N_LAYERS, head_dim: int = HEAD_DIM):
        super().__init__()
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        if d_model % head_dim:
            raise ValueError(f"llama core needs d_model divisible by head_dim {head_dim}; d_model={d_model}")
        heads = d_model // head_dim
        cfg = LlamaConfig(hidden_size=d_model, intermediate_size=4 * d_model, num_attention_heads=heads,
                          num_key_value_heads=heads, num_hidden_layers=n_layers, vocab_size=1,
                          max_position_embeddings=8192, rope_theta=10000.0, attention_dropout=0.0,
                          bos_token_id=None, eos_token_id=None, pad_token_id=None)
        cfg._attn_implementation = "sdpa"
        self.blocks = BaseLayers(nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(n_layers)), cfg,
                                 LlamaRotaryEmbedding(cfg))
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.out_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(self.blocks(x)))  # (B, T, d)
