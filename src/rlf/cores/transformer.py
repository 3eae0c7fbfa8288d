"""A 2-layer pre-norm causal Transformer encoder, optionally with rotary positions over the prompt.

Causal like the SSM cores, so right-padding never reaches a real position and no mask is needed. The layers are
torch's `nn.TransformerEncoderLayer` (their parameters, their feed-forward block); attention is computed here from
the layer's own projections, so that `positions="rope"` can rotate queries and keys by their token position (the
core can then address "the token k back", which a position-free core cannot: on shuffled pointer chains it must
bind a statement's name to its value, and the frozen encoder does not, see benchmarks/binding_probe.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlf.cores import causal_conv
from rlf.cores.rotary import rotate

POSITIONS = ("none", "rope", "conv")
CONV_K = 4  # positions="conv": the causal window, the current token and the 3 before it (as the Mamba2 core's conv)


class TransformerCore(nn.Module):
    def __init__(self, d_model: int, n_layers: int = 2, head_dim: int = 64, positions: str = "none"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions={positions!r}: use one of {', '.join(POSITIONS)}")
        self.positions = positions
        n_heads = max(1, d_model // head_dim)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        if positions == "conv":  # per channel, tap CONV_K - 1 multiplies the current token; nn.Conv1d's init (fan-in K)
            self.conv = nn.Parameter(torch.empty(d_model, CONV_K).uniform_(-CONV_K ** -0.5, CONV_K ** -0.5))
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.out_proj.weight)

    def _qkv(self, layer, h: torch.Tensor, position: torch.Tensor, query: bool = True):
        """Queries, keys, values (B, heads, T, head_dim) of h (B, T, d) at token positions `position` ((T,) or
        (B, T)), rotated by those positions when positions="rope"; without `query`, keys and values only."""
        *q, k, v = _project(layer, layer.norm1(h), query)
        if self.positions == "rope":
            angle = position[:, None] if position.dim() == 2 else position  # broadcast over heads
            q, k = [rotate(t, angle) for t in q], rotate(k, angle)
        return (*q, k, v)

    def _layers(self, x: torch.Tensor, memory: bool = False):
        """The causal pass over x (B, T, d), its output h; with `memory`, every layer's keys and values instead (two
        lists), without the last layer's queries, attention and feed-forward, which nothing reads then."""
        B, T, d = x.shape
        position = torch.arange(T, device=x.device)
        h, keys, values = self._conv(x), [], []
        for n, layer in enumerate(self.encoder.layers):
            if memory and n == len(self.encoder.layers) - 1:
                k, v = self._qkv(layer, h, position, query=False)
                return keys + [k], values + [v]
            q, k, v = self._qkv(layer, h, position)
            keys.append(k)
            values.append(v)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, head_dim)
            h = h + layer.self_attn.out_proj(out.transpose(1, 2).reshape(B, T, d))
            h = h + layer._ff_block(layer.norm2(h))
        return h

    def _conv(self, x: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
        """positions="conv": x (B, T, d) plus its causal depthwise convolution (`tail`, (B, CONV_K - 1, d): the
        inputs before x, zeros when None), so each position's input also holds its neighbours' (a statement's name
        beside its value, which the frozen encoder does not bind). Otherwise x itself."""
        return x + causal_conv(x, self.conv, tail)[1] if self.positions == "conv" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.norm(self._layers(x)))  # (B, T, d)

    def remember(self, x: torch.Tensor, last: torch.Tensor, rows: torch.Tensor | None = None) -> dict:
        """loop_span=answer: every layer's keys and values at positions < last (B,), from one causal pass; with
        `rows` (Q,), query j's of row rows[j] of x before last[j] (Q,), the pass run once per row of x."""
        keys, values = self._layers(x, memory=True)
        if rows is not None:
            keys, values = [k[rows] for k in keys], [v[rows] for v in values]
        before = torch.arange(x.shape[1], device=x.device)[None, :] < last[:, None]  # (Q, T)
        memory = {"keys": keys, "values": values, "before": before, "last": last}
        if self.positions == "conv":  # the answer position's window: the CONV_K - 1 inputs before it
            back = last[:, None] - CONV_K + 1 + torch.arange(CONV_K - 1, device=x.device)  # (Q, K - 1)
            rows = torch.arange(len(last), device=x.device) if rows is None else rows
            memory["tail"] = x[rows[:, None], back.clamp(min=0)] * (back >= 0)[..., None]  # zeros before the start
        return memory

    def recall(self, memory: dict, a: torch.Tensor) -> torch.Tensor:
        """The update at the answer position for its input a (B, d): it attends to the remembered positions and
        itself, as position `last` of `forward` does. Its attention weights are left in memory["attention"]
        (B, layers, heads, T + 1; column T is the answer position itself) for the copy read-out."""
        B = a.shape[0]
        h = self._conv(a[:, None], memory.get("tail"))[:, 0]
        mask = F.pad(memory["before"], (0, 1), value=True)[:, None]  # (B, 1, T + 1)
        weights = []
        for layer, k_mem, v_mem in zip(self.encoder.layers, memory["keys"], memory["values"]):
            q, k, v = (t[:, :, 0] for t in self._qkv(layer, h[:, None], memory["last"][:, None]))  # (B, heads, hd)
            # one query: the weights by hand cost what scaled_dot_product_attention does, and they are kept; the
            # remembered keys and values are used in place, not copied into one tensor with the query's own
            w = torch.cat([torch.einsum("bhd,bhtd->bht", q, k_mem), (q * k).sum(-1, keepdim=True)], -1)
            weights.append((w * q.shape[-1] ** -0.5).masked_fill(~mask, -torch.inf).softmax(-1))  # (B, heads, T + 1)
            a = weights[-1]
            out = torch.einsum("bht,bhtd->bhd", a[..., :-1], v_mem) + a[..., -1:] * v  # (B, heads, head_dim)
            h = h + layer.self_attn.out_proj(out.reshape(B, -1))
            h = h + layer._ff_block(layer.norm2(h))
        memory["attention"] = torch.stack(weights, 1)
        return self.out_proj(self.norm(h))


def _project(layer: nn.TransformerEncoderLayer, h: torch.Tensor, query: bool = True):
    """The layer's own query, key and value projections of h (B, T, d), split into heads (B, heads, T, head_dim);
    without `query`, the key and value projections only (the query rows of the weight are not multiplied)."""
    attn = layer.self_attn
    B, T, d = h.shape
    start = 0 if query else d
    out = F.linear(h, attn.in_proj_weight[start:], attn.in_proj_bias[start:])
    return [t.view(B, T, attn.num_heads, d // attn.num_heads).transpose(1, 2) for t in out.chunk(3 if query else 2, -1)]
