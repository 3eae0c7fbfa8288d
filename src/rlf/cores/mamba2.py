"""One Mamba2 mixer block (transformers' `Mamba2Mixer`) with a pre-norm; our only contact with its internals.

With the `mamba-ssm` CUDA kernels installed the mixer's own fused forward runs. Without them the core runs
`ssd_forward`: the mixer's parameters and arithmetic, with the scan done as one chunk covering the whole
(short) prompt. transformers' PyTorch fallback pads to whole chunks and, even for one chunk, builds and
passes (batch, heads, head_dim, state) inter-chunk states that the loop never uses: about a quarter of a
CPU training step. `tests/test_model.py` checks the two paths agree.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

from rlf.cores import causal_conv

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
        h = self.norm(x)
        if (x.is_cuda and _HAS_KERNELS) or x.shape[1] > ONE_CHUNK_MAX:
            self.mixer.chunk_size = min(self.chunk_size, -(-x.shape[1] // 8) * 8)
            return self.mixer(h)  # (B, T, d)
        return ssd_forward(self.mixer, h)

    def remember(self, x: torch.Tensor, last: torch.Tensor, rows: torch.Tensor | None = None) -> dict:
        """loop_span=answer: the core's view of positions < last (B,), built once per prompt; with `rows` (Q,), of
        query j's positions < last[j] (Q,) of row rows[j] of x."""
        return ssd_remember(self.mixer, self.norm(x), last, rows)

    def recall(self, memory: dict, a: torch.Tensor) -> torch.Tensor:
        """The update at the answer position for its input a (B, d), given `remember`'s memory: equals
        `forward` of the sequence with a at position last, read at last."""
        return ssd_recall(self.mixer, memory, self.norm(a))


ONE_CHUNK_MAX = 256  # longer prompts use the chunked scan: one chunk holds a (batch, heads, T, T) decay matrix
_HAS_KERNELS = importlib.util.find_spec("mamba_ssm") is not None


def scan_inputs(m, h: torch.Tensor, tail: torch.Tensor | None = None, gate: bool = True) -> dict:
    """The mixer's per-position scan inputs for h (B, T, d): the gate (None without `gate`: the input projection then
    skips its gate rows, ~47% of it), the conv's raw input behind the K - 1 raw inputs before h (`tail`,
    (B, K - 1, conv_dim); zeros at the start of a sequence), so that row s + K - 1 holds position s; x (B, T, H, P),
    B and C (B, T, H, N), dt (B, T, H) and A (H,)."""
    Bsz, T, _ = h.shape
    if gate:
        gate, xBC, dt = m.in_proj(h).split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)
    else:  # the memory of loop_span=answer: its prompt positions' gates are never read
        rows = slice(m.intermediate_size, None)
        bias = None if m.in_proj.bias is None else m.in_proj.bias[rows]
        gate, (xBC, dt) = None, F.linear(h, m.in_proj.weight[rows], bias).split([m.conv_dim, m.num_heads], dim=-1)
    padded, conv = causal_conv(xBC, m.conv1d.weight[:, 0, :], tail)  # (B, K-1+T, conv_dim), (B, T, conv_dim)
    xBC = m.act(conv + m.conv1d.bias if m.conv1d.bias is not None else conv)  # (B, T, conv_dim)
    xs, Bm, Cm = xBC.split([m.intermediate_size, m.n_groups * m.ssm_state_size, m.n_groups * m.ssm_state_size], -1)
    g = m.num_heads // m.n_groups
    return {
        "gate": gate, "padded": padded,
        "x": xs.view(Bsz, T, m.num_heads, m.head_dim).float(),
        "B": Bm.view(Bsz, T, m.n_groups, m.ssm_state_size).float().repeat_interleave(g, 2),
        "C": Cm.view(Bsz, T, m.n_groups, m.ssm_state_size).float().repeat_interleave(g, 2),
        "dt": F.softplus(dt + m.dt_bias).clamp(*m.time_step_limit).float(),
        "A": -torch.exp(m.A_log.float()),
    }


def ssd_forward(m, h: torch.Tensor) -> torch.Tensor:
    """transformers' `Mamba2Mixer` forward (no cache, no padding mask) with the scan as one chunk of length T.

    The state-space dual form: y_l = sum_{s<=l} C_l.B_s exp(sum_{s<r<=l} A dt_r) dt_s x_s + D x_l, per head.
    """
    Bsz, T, _ = h.shape
    s = scan_inputs(m, h)
    xs, dt = s["x"], s["dt"]
    cum = torch.cumsum(s["A"] * dt, dim=1).transpose(1, 2)  # (B, H, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
    decay = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, -torch.inf))  # (B, H, l, s)
    scores = torch.einsum("blhn,bshn->bhls", s["C"], s["B"]) * decay
    y = torch.einsum("bhls,bshp->blhp", scores, xs * dt[..., None]) + m.D[:, None] * xs  # (B, T, H, P)
    y = m.norm(y.reshape(Bsz, T, -1), s["gate"])
    return m.out_proj(y.to(h.dtype))


def ssd_remember(m, h: torch.Tensor, last: torch.Tensor, rows: torch.Tensor | None = None) -> dict:
    """What the answer position at index `last` (B,) reads of positions < last in `ssd_forward`: the SSM state
    after position last - 1, (B, H, P, N), and the conv's last K - 1 raw inputs, (B, K - 1, conv_dim) (zeros
    before the start, like the causal pad). With `ssd_recall` it gives `ssd_forward(m, h)` at `last` exactly.
    With `rows` (Q,), the same for queries j = row rows[j] of h read at last[j] (Q,): the scan inputs are
    computed once per row of h, however many queries read it."""
    T = h.shape[1]
    s = scan_inputs(m, h, gate=False)
    rows = torch.arange(h.shape[0], device=h.device) if rows is None else rows
    offsets = torch.arange(m.conv_kernel_size - 1, device=h.device)
    tail = s["padded"][rows[:, None], last[:, None] + offsets]  # raw inputs of positions last-K+1 .. last-1
    cum = torch.cumsum(s["A"] * s["dt"], dim=1)[rows]  # (Q, T, H)
    before = torch.arange(T, device=h.device)[None, :] < last[:, None]  # (Q, T): the positions remembered
    end = cum[torch.arange(len(rows), device=h.device), (last - 1).clamp_min(0)]  # (Q, H): cum at position last - 1
    weight = torch.exp((end[:, None] - cum).masked_fill(~before[..., None], -torch.inf)) * s["dt"][rows]  # (Q, T, H)
    state = torch.einsum("bsh,bshp,bshn->bhpn", weight, s["x"][rows], s["B"][rows])
    return {"state": state, "tail": tail}


def ssd_recall(m, memory: dict, h: torch.Tensor) -> torch.Tensor:
    """One recurrent Mamba2 step at the answer position: h (B, d) after the remembered positions -> (B, d)."""
    s = scan_inputs(m, h[:, None], tail=memory["tail"])  # one position: T = 1
    xs, Bm, Cm, dt = s["x"][:, 0], s["B"][:, 0], s["C"][:, 0], s["dt"][:, 0]  # (B, H, P), (B, H, N), (B, H)
    state = torch.exp(s["A"] * dt)[..., None, None] * memory["state"] + (dt[..., None] * xs)[..., None] * Bm[:, :, None]
    y = torch.einsum("bhpn,bhn->bhp", state, Cm) + m.D[:, None] * xs  # (B, H, P)
    y = m.norm(y.reshape(h.shape[0], -1), s["gate"][:, 0])
    return m.out_proj(y.to(h.dtype))
