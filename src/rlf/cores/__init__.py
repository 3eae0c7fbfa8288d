"""Reasoning cores: each maps x [B, T, d] to a residual update [B, T, d], causal in T, starting at zero.

One interface: ``build_core(kind, d_model, **options) -> nn.Module`` whose ``forward(x)`` returns the update.
Every contact with transformers' mixer internals lives in the one file of that core.
"""

from __future__ import annotations

from torch import nn

from rlf.errors import RLFError

CORES = ("mamba2", "transformer", "mamba1")


def build_core(kind: str, d_model: int, chunk_size: int = 64) -> nn.Module:
    """A reasoning core of the given kind with its output projection at zero (the loop starts as identity)."""
    if kind == "mamba2":
        from rlf.cores.mamba2 import Mamba2Core

        return Mamba2Core(d_model, chunk_size=chunk_size)
    if kind == "transformer":
        from rlf.cores.transformer import TransformerCore

        return TransformerCore(d_model)
    if kind == "mamba1":
        from rlf.cores.mamba1 import Mamba1Core

        return Mamba1Core(d_model)
    raise RLFError(f"core={kind!r}: use one of {', '.join(CORES)}")
