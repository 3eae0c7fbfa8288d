"""Reasoning cores: each maps x [B, T, d] to a residual update [B, T, d], causal in T, starting at zero.

One interface: ``build_core(kind, d_model, **options) -> nn.Module`` whose ``forward(x)`` returns the update.
Every contact with transformers' mixer internals lives in the one file of that core.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlf.errors import RLFError

CORES = ("mamba2", "transformer", "mamba1")


def causal_conv(x: torch.Tensor, w: torch.Tensor, tail: torch.Tensor | None = None):
    """A causal depthwise convolution of x (B, T, C) by w (C, K) (tap K - 1 multiplies the current position) as K
    shifted multiply-adds: mkldnn's depthwise conv1d backward alone cost ~6% of a training step (torch.profiler,
    default preset). `tail` (B, K - 1, C): the inputs before x (zeros when None). Returns the padded input
    (B, K - 1 + T, C) and the convolution (B, T, C)."""
    K, T = w.shape[1], x.shape[1]
    padded = F.pad(x, (0, 0, K - 1, 0)) if tail is None else torch.cat([tail, x], 1)
    return padded, sum(padded[:, k : k + T] * w[:, k] for k in range(K))


class NarrowCore(nn.Module):
    """A core that loops in k < d dimensions: x -> down (d -> k) -> core at width k -> up (k -> d).

    The lifeline, loop norm and read-out stay at d; the core's arithmetic shrinks by about (d/k)^2. The inner
    core's output projection starts at zero (so the update does), `up` starts random so both get gradients.
    """

    def __init__(self, inner: nn.Module, d_model: int, core_dim: int):
        super().__init__()
        self.down = nn.Linear(d_model, core_dim, bias=False)
        self.inner = inner
        self.up = nn.Linear(core_dim, d_model, bias=False)

    def forward(self, x):
        return self.up(self.inner(self.down(x)))

    def remember(self, x, last, rows=None):
        return self.inner.remember(self.down(x), last, rows)

    def recall(self, memory, a):
        return self.up(self.inner.recall(memory, self.down(a)))


def build_core(kind: str, d_model: int, chunk_size: int = 64, core_dim: int = 0, positions: str = "none") -> nn.Module:
    """A reasoning core of the given kind with its output projection at zero (the loop starts as identity).

    `core_dim` k > 0 (and below d_model) runs it at width k between a down and an up projection. `positions`
    ("none" or "rope") is the transformer's attention over token positions."""
    if core_dim and core_dim != d_model:
        if core_dim > d_model:
            raise RLFError(f"core_dim={core_dim}: must be at most the base's width {d_model} (0 = the base's width)")
        return NarrowCore(build_core(kind, core_dim, chunk_size, positions=positions), d_model, core_dim)
    if kind == "mamba2":
        from rlf.cores.mamba2 import Mamba2Core

        return Mamba2Core(d_model, chunk_size=chunk_size)
    if kind == "transformer":
        from rlf.cores.transformer import TransformerCore

        return TransformerCore(d_model, positions=positions)
    if kind == "mamba1":
        from rlf.cores.mamba1 import Mamba1Core

        return Mamba1Core(d_model)
    raise RLFError(f"core={kind!r}: use one of {', '.join(CORES)}")
