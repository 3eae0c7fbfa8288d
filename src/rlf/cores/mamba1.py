"""One Mamba (v1) mixer block (transformers' `MambaMixer`) with a pre-norm.

Its CPU path is a sequential scan over T, slower than Mamba2's chunked scan (benchmarks/bench_core.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Mamba1Core(nn.Module):
    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2):
        super().__init__()
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer

        cfg = MambaConfig(
            hidden_size=d_model, state_size=d_state, expand=expand, conv_kernel=4,
            time_step_rank=math.ceil(d_model / 16), num_hidden_layers=1,
        )
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = MambaMixer(cfg, layer_idx=0)  # initialize_mixer_weights=True: A_log, D, dt set
        nn.init.zeros_(self.mixer.out_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.norm(x))  # (B, T, d)
