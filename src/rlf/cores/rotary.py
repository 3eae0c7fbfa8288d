"""Rotary encoding (RoPE): rotate interleaved pairs of the last dimension by position x frequency."""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor, position: int | torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs (x0,x1), (x2,x3), ... of x (..., D) by position * base^(-2j/D): identity at 0, norm-preserving.

    `position` is a number or a tensor that broadcasts against x's leading dimensions (..., 1 dropped: a (T,)
    tensor rotates the rows of x (..., T, D) by their own positions)."""
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) * 2 / d)  # (D/2,)
    angle = torch.as_tensor(position, device=x.device, dtype=torch.float32)[..., None] * inv_freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., D/2)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
