"""One Mamba2 mixer block (transformers' `Mamba2Mixer`) with a pre-norm; our only contact with its internals.

The mixer uses the `mamba-ssm` CUDA kernels when installed and a pure-PyTorch chunked scan otherwise.
On CPU the PyTorch path pads every sequence to a whole chunk, so `chunk_size` should be close to the
prompt lengths; the core shrinks it per call to the batch's length (rounded up to 8).
"""

from __future__ import annotations

import math

import torch
from torch import nn

D_STATE, EXPAND, HEAD_DIM = 64, 2, 64


class Mamba2Core(nn.Module):
    def __init__(self, d_model: int, chunk_size: int = 64):
        super().__init__()
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

        if (EXPAND * d_model) % HEAD_DIM:
            raise ValueError(f"mamba2 core needs {EXPAND}*d_model divisible by head_dim {HEAD_DIM}; d_model={d_model}")
        cfg = Mamba2Config(
            hidden_size=d_model, expand=EXPAND, head_dim=HEAD_DIM, num_heads=EXPAND * d_model // HEAD_DIM,
            state_size=D_STATE, n_groups=1, conv_kernel=4, chunk_size=chunk_size, num_hidden_layers=1,
        )
        self.chunk_size = chunk_size
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = Mamba2Mixer(cfg, layer_idx=0)
        self._init_ssm(cfg)
        nn.init.zeros_(self.mixer.out_proj.weight)

    @torch.no_grad()
    def _init_ssm(self, cfg) -> None:
        """The Mamba2 paper's init, done here because transformers changed it between 4.x and 5.x."""
        m = self.mixer
        m.A_log.copy_(torch.log(torch.arange(1, m.num_heads + 1, dtype=torch.float32)))
        m.D.fill_(1.0)
        u = torch.rand(m.num_heads)
        dt = torch.exp(u * (math.log(cfg.time_step_max) - math.log(cfg.time_step_min)) + math.log(cfg.time_step_min))
        dt = dt.clamp(min=cfg.time_step_floor)
        m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The PyTorch scan pads T up to a whole chunk; a chunk just covering T does the least work.
        # The result does not depend on the chunk size (the chunked scan is exact).
        self.mixer.chunk_size = min(self.chunk_size, -(-x.shape[1] // 8) * 8)
        return self.mixer(self.norm(x))  # (B, T, d)
