"""The RLF loop: prompt lifeline, loop position, reasoning core, loop norm, and the head with a <HALT> row.

    x = x_prompt                                   # frozen base encoding, computed once   (B, T, d)
    for i in 0, 1, 2, ...:
        x = x + gate * x_prompt                    # Prompt Lifeline
        x = loop_position(x, i)                    # rotary encoding of the loop index
        x = looped_layers(x)                       # optional (loop_layers=M): the base's next M blocks, with LoRA
        x = x + core(x)                            # residual update, causal in T
        x = loop_norm(x)
        logits_i = head(x[:, answer_pos])          # base LM head (+ final norm) and one extra row for <HALT>

With target_tokens=K > 1 a loop's target is a word of up to K base tokens: the answer state is read through K
slots (slot 0 the state itself, slot k its image under a learned d x d map) and the same head; slot k names the
word's k-th token, the first slot past a shorter word names the end marker (the <HALT> row), and <HALT> as a loop
decision is read from slot 0 alone.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlf.cores import build_core
from rlf.cores.rotary import rotate
from rlf.errors import RLFError

IGNORE = -100  # a target slot the loss skips (F.cross_entropy's ignore_index)
SOLVE_LOOPS = 64  # the default loop limit of `solve`: enough for 62 hops (62 pointers, the answer, <HALT>)


@dataclass
class RLFConfig:
    d_model: int
    vocab_size: int  # the base vocabulary; the <HALT> id is vocab_size
    core: Literal["mamba2", "transformer", "mamba1"] = "mamba2"
    lifeline: Literal["vector", "scalar", "none"] = "vector"
    loop_pos: Literal["rope", "learned", "none"] = "rope"
    max_loops: int = 16  # rows of the `learned` table: loop i uses row min(i, max_loops - 1)
    train_head: bool = False  # fine-tune the base LM head and final norm (else frozen; the HALT row always trains)
    scratchpad: int = 0  # K learned memory tokens prepended to the sequence (0 = off)
    bridge_rank: int = 0  # low-rank bridge x + up(down(x)) before the head (0 = off)
    core_dim: int = 0  # the core's width k: down-project d -> k, loop the core in k, up-project (0 = d)
    chunk_size: int = 64  # Mamba2 scan chunk: ~ the prompt length on CPU, where the scan pads to whole chunks
    loop_layers: int = 0  # base blocks above the encoder run in the loop before the core, with LoRA (0 = off)
    lora_rank: int = 8  # the seeds' rank-8 LoRA
    lora_alpha: float = 16.0
    loop_span: Literal["all", "answer"] = "all"  # what each loop updates; see RLFModel._loop
    core_pos: Literal["none", "rope", "conv"] = "none"  # transformer only: rotary attention, or a width-4 causal conv
    target_tokens: int = 1  # K read-out slots per loop: a loop target may be a word of up to K base tokens
    feedback: Literal["state", "pointer"] = "state"  # what loop k >= 1 starts from; see RLFModel.pointer_key
    readout: Literal["head", "copy"] = "head"  # copy: a loop names a word of its prompt or <HALT>; see copy_logits

    def __post_init__(self):
        for name, valid in (("core", ("mamba2", "transformer", "mamba1")), ("lifeline", ("vector", "scalar", "none")),
                            ("loop_pos", ("rope", "learned", "none")), ("loop_span", ("all", "answer")),
                            ("core_pos", ("none", "rope", "conv")), ("feedback", ("state", "pointer")),
                            ("readout", ("head", "copy"))):
            if getattr(self, name) not in valid:
                raise RLFError(f"model.{name}={getattr(self, name)!r}: use one of {', '.join(valid)}")
        if self.target_tokens < 1:
            raise RLFError(f"model.target_tokens={self.target_tokens}: must be 1 or more (1 = one token per loop)")
        if self.core_pos != "none" and self.core != "transformer":
            raise RLFError(f"core_pos={self.core_pos} is for core=transformer (a {self.core} core's scan and "
                           f"convolution are positional already)")
        if self.feedback == "pointer" and (self.loop_span != "answer" or self.target_tokens != 1):
            raise RLFError(f"feedback=pointer replaces the answer state with one word's key: it needs loop_span=answer "
                           f"and target_tokens=1 (this model has loop_span={self.loop_span}, "
                           f"target_tokens={self.target_tokens})")
        if self.readout == "copy" and (self.core != "transformer" or self.feedback != "pointer"):
            raise RLFError(f"readout=copy weighs the prompt's words by the core's attention at the answer position: "
                           f"it needs core=transformer and feedback=pointer (this model has core={self.core}, "
                           f"feedback={self.feedback})")
        if self.loop_span == "answer":
            clash = [k for k in ("scratchpad", "loop_layers") if getattr(self, k)]
            if self.core not in ("mamba2", "transformer") or clash:
                have = ", ".join([f"core={self.core}", *(f"{k}={getattr(self, k)}" for k in clash)])
                raise RLFError(f"loop_span=answer is built for core=mamba2 or transformer without scratchpad or "
                               f"loop_layers; this model has {have}")

    @classmethod
    def from_dict(cls, d: dict) -> "RLFConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def with_lora(layers: nn.Module, rank: int, alpha: float) -> nn.Module:
    """A copy of frozen base layers with peft LoRA adapters on every linear map; only the adapters train.

    The copy shares the frozen weights with the base (no second copy in memory, the base itself is not modified);
    the adapters start as the identity (peft initialises B = 0).
    """
    from peft import LoraConfig, inject_adapter_in_model

    layers = copy.deepcopy(layers, memo={id(p): p for p in layers.parameters()})
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear")
    return inject_adapter_in_model(lora, layers)


class RLFModel(nn.Module):
    """The loop model on top of a frozen base's encodings; the base's LM head and final norm form the head."""

    def __init__(self, cfg: RLFConfig, lm_head: torch.Tensor, final_norm: nn.Module,
                 upper_layers: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if lm_head.shape != (cfg.vocab_size, d):
            raise ValueError(f"lm_head is {tuple(lm_head.shape)}, expected ({cfg.vocab_size}, {d})")
        if cfg.lifeline != "none":
            self.lifeline_gate = nn.Parameter(torch.ones(d if cfg.lifeline == "vector" else 1, dtype=torch.float32))
        if cfg.loop_pos == "learned":
            self.loop_embedding = nn.Parameter(torch.randn(cfg.max_loops, d) * 0.02)
        if cfg.scratchpad:
            self.scratchpad = nn.Parameter(torch.randn(cfg.scratchpad, d) * 0.02)
        self.core = build_core(cfg.core, d, chunk_size=cfg.chunk_size, core_dim=cfg.core_dim, positions=cfg.core_pos)
        self.loop_norm = nn.RMSNorm(d, eps=1e-5)
        if cfg.bridge_rank:
            self.bridge_down = nn.Linear(d, cfg.bridge_rank, bias=False)
            self.bridge_up = nn.Linear(cfg.bridge_rank, d, bias=False)
            nn.init.zeros_(self.bridge_up.weight)
        self.final_norm = copy.deepcopy(final_norm).float().requires_grad_(cfg.train_head)
        if cfg.train_head:
            self.lm_head = nn.Parameter(lm_head.detach().float().clone())
        else:
            self.register_buffer("lm_head", lm_head.detach().float(), persistent=False)
        self.halt_row = nn.Parameter(lm_head.detach().float().mean(0, keepdim=True).clone())  # (1, d)
        if cfg.readout == "copy":  # a mixture over the core's attention heads, every layer's: uniform at the start
            layers = getattr(self.core, "inner", self.core).encoder.layers
            self.copy_mix = nn.Parameter(torch.zeros(len(layers) * layers[0].self_attn.num_heads))
        if cfg.target_tokens > 1:  # slot k reads h + slot_maps[k - 1] h: zero, so every slot starts as slot 0 reads
            self.slot_maps = nn.Parameter(torch.zeros(cfg.target_tokens - 1, d, d))  # (K - 1, d, d), no RNG drawn
        if cfg.loop_layers:  # last, so the other parameters draw the same random numbers with or without it
            n = len(getattr(upper_layers, "layers", ()))
            if n != cfg.loop_layers:
                raise ValueError(f"loop_layers={cfg.loop_layers} needs that many base layers (upper_layers), got {n}")
            self.looped_layers = with_lora(upper_layers, cfg.lora_rank, cfg.lora_alpha)

    @property
    def halt_id(self) -> int:
        return self.cfg.vocab_size

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the base vocabulary plus <HALT> (last index) for answer-position states (..., d)."""
        h = self.head_input(h)
        # two products, not one over cat([lm_head, halt_row]): the cat copies the vocabulary matrix every call and,
        # as it requires grad, autograd would form the full (V, d) weight gradient only to keep its last row
        return torch.cat([F.linear(h, self.lm_head), F.linear(h, self.halt_row)], -1)  # (..., V + 1)

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        """What the head's rows multiply: answer states h (..., d) through the bridge (if any) and the final norm."""
        if self.cfg.bridge_rank:
            h = h + self.bridge_up(self.bridge_down(h))
        return self.final_norm(h)

    def pointer_key(self, x_prompt: torch.Tensor, prompt_ids: torch.Tensor, lengths: torch.Tensor,
                    word: torch.Tensor) -> torch.Tensor:
        """feedback=pointer: loop k >= 1 starts not from loop k - 1's answer state but from the key of the word that
        loop named: the encoder's states of the prompt positions holding that word, averaged (B, d).

        `word` is a distribution over the base vocabulary (B, V) (the loop's softmax at inference; teacher forcing
        in training gives the right word's one-hot) or ids (B,) (IGNORE: no word); each prompt position t < lengths
        weighs word[prompt_ids[t]]. A word the prompt does not hold (<HALT>, the target after the value) gives 0."""
        T = x_prompt.shape[1]
        ids = prompt_ids[:, :T].to(x_prompt.device)
        valid = (ids >= 0) & (torch.arange(T, device=ids.device)[None, :] < lengths[:, None].to(ids.device))
        if word.dim() == 1:
            w = (ids == word[:, None].to(ids.device)) & valid
        else:
            w = word.gather(1, ids.clamp_min(0)) * valid
        w = w.to(x_prompt.dtype)
        return torch.einsum("bt,btd->bd", w / w.sum(1, keepdim=True).clamp_min(1e-9), x_prompt)

    def copy_logits(self, h: torch.Tensor, attention: torch.Tensor, prompt_ids: torch.Tensor, lengths: torch.Tensor
                    ) -> torch.Tensor:
        """readout=copy: the logits (B, ..., V + 1) of loops with answer states h (B, ..., d) whose core attention at
        the answer position was `attention` (B, ..., layers, heads, T + 1; column T the answer position itself), as
        a product of experts over the words of the prompt before the answer position and <HALT> (every other token
        -inf): a word's logit is the head's plus the log of the attention mass on its positions under a learned
        mixture of the heads; <HALT>'s, the head's plus the log of the mass on the answer position itself (nothing
        left to look up).

        The answer loop's loss so reaches the attention that found the value word, where the frozen head alone
        could not name it (a conv-Transformer run's lookup head held the value in 197 of 200 validation chains,
        its head read-out named 6; benchmarks/answer_attention.py). `prompt_ids` (B, >= T), -1 past an end.

        The head is applied to the prompt's words only (T rows per example, not the V of the vocabulary: the others
        are -inf whatever the head says), each word's value written once, from its first position."""
        T, V = attention.shape[-1] - 1, self.cfg.vocab_size
        B, inner = h.shape[0], [1] * (h.dim() - 2)  # inner: the loop (and slot) dimensions between B and d
        ids = prompt_ids[:, :T].to(h.device)
        ids = torch.where(torch.arange(T, device=h.device)[None, :] < lengths[:, None].to(h.device) - 1, ids, -1)
        valid = ids >= 0  # (B, T)
        same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, T, T)
        first = valid & ~(same.tril(-1).any(-1))  # a word's first position in its prompt
        hn = self.head_input(h)
        z = torch.einsum("b...d,btd->b...t", hn, self.lm_head[ids.clamp_min(0)].to(hn.dtype))  # (B, ..., T)
        z_halt = F.linear(hn, self.halt_row)  # (B, ..., 1)
        mix = self.copy_mix.softmax(0).to(attention.dtype)
        a = torch.einsum("n,...nt->...t", mix, attention.flatten(-3, -2))  # (B, ..., T + 1)
        mass = torch.einsum("b...s,bts->b...t", a[..., :T], same.to(a.dtype))  # each position: its word's mass
        value = torch.cat([z + mass.clamp_min(1e-6).log(), z_halt + a[..., T:].clamp_min(1e-6).log()], -1)
        index = torch.cat([torch.where(first, ids, V + 1), torch.full((B, 1), V, device=h.device)], -1)
        index = index.view(B, *inner, T + 1).expand(value.shape)  # a repeated word's later positions: column V + 1
        out = torch.full((*value.shape[:-1], V + 2), -torch.inf, dtype=value.dtype, device=h.device)
        return out.scatter(-1, index, value)[..., : V + 1]

    def slots(self, h: torch.Tensor) -> torch.Tensor:
        """The K read-out states (..., K, d) of answer states h (..., d): slot 0 is h, slot k is h + slot_maps[k-1] h;
        with K = 1 it is h itself, unchanged (..., d)."""
        if self.cfg.target_tokens == 1:
            return h
        extra = h.unsqueeze(-2) + torch.einsum("ked,...d->...ke", self.slot_maps.to(h.dtype), h)  # (..., K - 1, d)
        return torch.cat([h.unsqueeze(-2), extra], -2)

    def lifeline_source(self, x_prompt, lengths, prompt_mode: str, generator: torch.Generator | None):
        """What the lifeline re-injects: the prompt, Gaussian noise of matched norm, or the prompt shuffled."""
        if prompt_mode == "intact":
            return x_prompt
        B, T, _ = x_prompt.shape
        valid = torch.arange(T, device=x_prompt.device)[None, :] < lengths[:, None].to(x_prompt.device)  # (B, T)
        if prompt_mode == "noise":
            noise = torch.randn(x_prompt.shape, generator=generator, device="cpu").to(x_prompt)
            noise = noise * (x_prompt.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-6))
            return noise * valid[..., None]
        if prompt_mode == "shuffle":  # permute positions within each prompt's own length
            keys = torch.rand(B, T, generator=generator, device="cpu").to(x_prompt.device)
            keys = torch.where(valid, keys, torch.full_like(keys, 2.0))  # padding stays at the end
            perm = keys.argsort(dim=1)  # (B, T)
            return x_prompt.gather(1, perm[..., None].expand_as(x_prompt))
        raise RLFError(f"prompt_mode={prompt_mode!r}: use intact, noise or shuffle")

    def inject(self, x, source, loop_index: int, gate_scale: float = 1.0):
        """A loop's input: the state (..., d) plus the lifeline and the loop position."""
        if self.cfg.lifeline != "none":
            inject = (self.lifeline_gate * gate_scale).to(x.dtype) * source
            if self.cfg.scratchpad:  # the lifeline reaches prompt positions only
                inject = F.pad(inject, (0, 0, self.cfg.scratchpad, 0))
            x = x + inject
        if self.cfg.loop_pos == "rope":
            x = rotate(x, loop_index)
        elif self.cfg.loop_pos == "learned":
            x = x + self.loop_embedding[min(loop_index, self.cfg.max_loops - 1)]
        return x

    def step(self, x, source, loop_index: int, gate_scale: float = 1.0):
        """One loop iteration on the full sequence state x (B, T', d)."""
        x = self.inject(x, source, loop_index, gate_scale)
        if self.cfg.loop_layers:
            x = self.looped_layers(x)  # the base's upper blocks (frozen + LoRA), causal in T, their own residual
        x = x + self.core(x)
        return self.loop_norm(x)

    def _start(self, x_prompt, lengths):
        B = x_prompt.shape[0]
        x = x_prompt
        if self.cfg.scratchpad:
            x = torch.cat([self.scratchpad.to(x.dtype).expand(B, -1, -1), x], dim=1)
        answer_pos = lengths.to(x.device) - 1 + self.cfg.scratchpad  # (B,)
        return x, answer_pos

    def _loop(self, x_prompt, lengths, source, gate_scale: float = 1.0, rows=None, trail: list | None = None):
        """The loop's starting state, its step `step(state, i)` and the answer-position read-out `read(state)` (B, d).

        loop_span=all: the state is the whole sequence (B, T', d) and each step updates every position.
        loop_span=answer: the core reads the prompt once (the loop-0 input of every position before the answer) into
        a memory, the state is the answer position alone (B, d), and each step updates it against that memory: O(1)
        in the prompt length per loop instead of O(T). Loop 0 is the same either way; later loops differ, as the
        prompt positions no longer change.

        With `rows` (Q,) the loop runs queries: query j is row rows[j] of x_prompt cut to lengths[j] (Q,) (the chain
        warm-up); loop_span=answer reads each row into its memories once."""
        if rows is not None and self.cfg.loop_span == "all":  # every position loops: one sequence per query
            x_prompt, source, rows = x_prompt[rows], source[rows], None
        x, answer_pos = self._start(x_prompt, lengths)
        row_of = torch.arange(len(answer_pos), device=x.device) if rows is None else rows.to(x.device)
        if self.cfg.loop_span == "all":
            return x, (lambda x, i: self.step(x, source, i, gate_scale)), (lambda x: x[row_of, answer_pos])
        queries = None if rows is None else row_of
        memory = self.core.remember(self.inject(x, source, 0, gate_scale), answer_pos, queries)
        source_a = source[row_of, answer_pos]

        def step(a, i: int):
            a = self.inject(a, source_a, i, gate_scale)
            a = self.loop_norm(a + self.core.recall(memory, a))
            if trail is not None:  # readout=copy: the step's core attention (B, layers, heads, T + 1)
                trail.append(memory["attention"])
            return a

        return x[row_of, answer_pos], step, (lambda a: a)

    def forward(
        self, x_prompt: torch.Tensor, lengths: torch.Tensor, n_loops: int, *, gate_scale: float = 1.0,
        prompt_mode: str = "intact", generator: torch.Generator | None = None, return_states: bool = False,
        rows: torch.Tensor | None = None, prompt_ids: torch.Tensor | None = None, teacher: torch.Tensor | None = None,
    ):
        """Per-loop logits at the answer position, (B, n_loops, V + 1), or (B, n_loops, K, V + 1) with K > 1 slots;
        with return_states also the answer states (B, n_loops, d). With `rows` (Q,), of Q queries: query j is
        prompt rows[j] cut to lengths[j] (Q,).

        feedback=pointer needs the prompts' token ids `prompt_ids` (B, T), -1 past a prompt's end; with `teacher`
        (B or Q, n_loops) target ids, loop k >= 1 is fed the key of teacher[:, k - 1] (teacher forcing), else the key
        of loop k - 1's own softmax."""
        if rows is not None and prompt_mode != "intact":
            raise RLFError(f"prompt_mode={prompt_mode} perturbs whole prompts, not queries (rows)")
        source = self.lifeline_source(x_prompt, lengths, prompt_mode, generator)
        trail = [] if self.cfg.readout == "copy" else None
        state, step, read = self._loop(x_prompt, lengths, source, gate_scale, rows, trail)
        feed = self._feed(x_prompt, lengths, prompt_ids, rows)
        ids = prompt_ids if rows is None or prompt_ids is None else prompt_ids[rows.to(prompt_ids.device)]
        states, logits = [], []
        for i in range(n_loops):
            if i and feed is not None:
                state = feed(teacher[:, i - 1] if teacher is not None else logits[-1])
            state = step(state, i)
            states.append(read(state))  # (B, d)
            if feed is not None and teacher is None:
                logits.append(self._read_out(states[-1], None if trail is None else trail[-1], ids, lengths))
        h = torch.stack(states, 1)  # (B, L, d)
        if logits:
            logits = torch.stack(logits, 1)
        else:  # (B, L, V + 1), or (B, L, K, V + 1)
            logits = self._read_out(self.slots(h), None if trail is None else torch.stack(trail, 1), ids, lengths)
        return (logits, h) if return_states else logits

    def _read_out(self, h, attention, prompt_ids, lengths):
        """The head's logits of answer states h, through the copy read-out when the loop's attention is given."""
        return self.head(h) if attention is None else self.copy_logits(h, attention, prompt_ids, lengths)

    def _feed(self, x_prompt, lengths, prompt_ids, rows=None):
        """feedback=pointer: `feed(word)` gives the next loop's input from a word (ids (B,), or logits (B, V + 1)
        whose softmax over the base vocabulary weighs the words); None for feedback=state."""
        if self.cfg.feedback != "pointer":
            return None
        if prompt_ids is None:
            raise RLFError("feedback=pointer reads the prompt's token ids: pass prompt_ids (B, T)")
        if rows is not None:
            x_prompt, prompt_ids = x_prompt[rows], prompt_ids[rows.to(prompt_ids.device)]
        V = self.cfg.vocab_size

        def feed(word):
            word = word if word.dim() == 1 else word[..., :V].float().softmax(-1)
            return self.pointer_key(x_prompt, prompt_ids, lengths, word)
        return feed

    @torch.no_grad()
    def solve(
        self, x_prompt: torch.Tensor, lengths: torch.Tensor, max_loops: int | None = None, *, gate_scale: float = 1.0,
        prompt_mode: str = "intact", generator: torch.Generator | None = None, min_loops: int = 0,
        return_states: bool = False, loop_offset: int = 0, loop_clamp: int | None = None,
        prompt_ids: torch.Tensor | None = None,
    ) -> dict:
        """Loop until every example has emitted <HALT> (or max_loops, default SOLVE_LOOPS); finished examples stop
        changing.

        Returns tensors (B, L): `tokens` (top-1 id), `p` (its probability), `p_halt`, and `halted_at` (B,)
        = the loop index of the first <HALT>, or -1; with K > 1 slots these are slot 0's, and `words` (B, L, K)
        holds each loop's word as `word_of` writes it, `p_word` (B, L) its probability. Memory is O(1) in the loop
        count: only the current state is kept (plus the (B, L) outputs, and (B, L, d) answer states when return_states).
        `min_loops` forces at least that many loops (to check that answers are stable after <HALT>).
        `loop_offset` and `loop_clamp` (inference probes of the loop clock) make loop i see the loop position
        min(i + loop_offset, loop_clamp) instead of i: does the model count loops by content or by that clock?
        """
        if (loop_offset or loop_clamp is not None) and self.cfg.loop_pos == "none":
            raise RLFError("loop_offset/loop_clamp move the loop position, and this model has none (loop_pos=none)")
        max_loops = max_loops or SOLVE_LOOPS
        source = self.lifeline_source(x_prompt, lengths, prompt_mode, generator)
        trail = [] if self.cfg.readout == "copy" else None
        state, step, read = self._loop(x_prompt, lengths, source, gate_scale, trail=trail)
        feed = self._feed(x_prompt, lengths, prompt_ids)
        B = x_prompt.shape[0]
        halted_at = torch.full((B,), -1, dtype=torch.long, device=state.device)
        tokens, probs, halt_ps, states, words, p_words = [], [], [], [], [], []
        K = self.cfg.target_tokens
        for i in range(max_loops):
            position = i + loop_offset if loop_clamp is None else min(i + loop_offset, loop_clamp)
            done = halted_at >= 0
            keep = done.view(B, *[1] * (state.dim() - 1))
            fed = feed(z) if i and feed is not None else state  # feedback=pointer: the key of the last loop's word
            state = torch.where(keep, state, step(fed, position))  # a finished example keeps its state
            h = read(state)
            z = self._read_out(self.slots(h), None if trail is None else trail.pop(), prompt_ids, lengths).float()
            p = z.softmax(-1)  # (B, V + 1), or (B, K, V + 1)
            top_p, top = p.max(-1)  # (B,), or (B, K)
            if K > 1:  # the loop's word; its probability is the product over the slots it uses, end marker included
                word = word_of(top, self.halt_id)
                words.append(torch.where(done[:, None], word_of(torch.full_like(top, self.halt_id), self.halt_id),
                                         word))
                p_words.append(torch.where(word != IGNORE, top_p, torch.ones_like(top_p)).prod(-1))
                p, top_p, top = p[:, 0], top_p[:, 0], top[:, 0]  # slot 0 decides <HALT>
            tokens.append(torch.where(done, self.halt_id, top))
            probs.append(top_p)
            halt_ps.append(p[:, self.halt_id].clone())  # a copy: a view would keep all of p alive
            if return_states:
                states.append(h)
            halted_at = torch.where(~done & (top == self.halt_id), torch.full_like(halted_at, i), halted_at)
            if (halted_at >= 0).all() and i + 1 >= min_loops:
                break
        out = {"tokens": torch.stack(tokens, 1), "p": torch.stack(probs, 1), "p_halt": torch.stack(halt_ps, 1),
               "halted_at": halted_at}
        if K > 1:
            out["words"], out["p_word"] = torch.stack(words, 1), torch.stack(p_words, 1)
        if return_states:
            out["states"] = torch.stack(states, 1)
        return out


def word_of(slot_ids: torch.Tensor, halt_id: int) -> torch.Tensor:
    """A loop's word in the form targets take (..., K): its token ids, the end marker (halt_id) in the first slot
    past it, IGNORE after that; a loop whose slot 0 is <HALT> is [halt_id, IGNORE, ...]. From slot ids (..., K)."""
    is_end = slot_ids == halt_id
    after_end = (is_end.cumsum(-1) - is_end.long()) > 0  # some earlier slot holds the end marker
    return torch.where(after_end, torch.full_like(slot_ids, IGNORE), slot_ids)


def copy_loss(model: RLFModel, x_prompt: torch.Tensor, lengths: torch.Tensor, token_ids: torch.Tensor,
              starts: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The read-out warm-up (supervision=copy): one loop step over the prompt, then the head at k positions per prompt
    (`uniform` (B, k), numbers in [0, 1) that pick them, with replacement) must name the token at that position. It
    teaches the core and norm to turn a prompt word's state into that word's head row, for every word of every prompt.

    `token_ids` holds the prompts' token ids end to end (1-D), `starts` (B,) where each prompt of the batch begins."""
    B, k = uniform.shape
    pos = (uniform * lengths[:, None].float()).long()  # (B, k), < length
    ids = token_ids[starts[:, None] + pos]  # (B, k)
    rows = torch.arange(B)[:, None].expand(B, k)
    return position_loss(model, x_prompt, lengths, rows.reshape(-1), pos.reshape(-1), ids.reshape(-1))


def position_loss(model: RLFModel, x_prompt: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor,
                  pos: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """One loop step over every prompt position, then the head at the pairs (rows[j], pos[j]) (each (N,)) must name
    ids[j]: the dense targets of the copy and lookup warm-ups (supervision=copy, supervision=lookup)."""
    x, _ = model._start(x_prompt, lengths)
    x = model.step(x, x_prompt, 0)
    h = x[rows.to(x.device), pos.to(x.device) + model.cfg.scratchpad]  # (N, d)
    logits = model.head(h)
    ids = ids.to(x.device)
    loss = F.cross_entropy(logits.float(), ids)
    with torch.no_grad():
        hits = int((logits.argmax(-1) == ids).sum())
    return loss, {"trace_hits": 0, "loop_hits": [hits], "n": len(ids)}


def chain_loss(model: RLFModel, x_prompt: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor,
               targets: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The chain warm-up (supervision=chains): query j is prompt rows[j] cut just after position pos[j] (a causal
    encoder's states of a prefix are the prompt's), looped as the task is, its loops supervised by targets (Q, L);
    feedback=pointer takes the prompts' ids and is teacher-forced with those targets."""
    x = x_prompt[:, : int(pos.max()) + 1]
    teacher = None if prompt_ids is None else targets
    return loop_loss(model(x, pos.to(x.device) + 1, targets.shape[1], rows=rows.to(x.device), prompt_ids=prompt_ids,
                           teacher=teacher), targets)


def loops_needed(target_ids: list[list[int]], supervision: str = "per_loop", extra: int = 0) -> int:
    """Loops a batch runs: the longest trace, its <HALT>, and `extra` more <HALT> loops; one for answer_once."""
    return 1 if supervision == "answer_once" else max(len(t) for t in target_ids) + 1 + extra


def loop_targets(target_ids: list[list], halt_id: int, n_loops: int, supervision: str = "per_loop", slots: int = 1
                 ) -> torch.Tensor:
    """Targets (B, n_loops): each example's per-loop ids, then <HALT> at every later loop (absorbing halt).

    With supervision="final" only the answer loop and the halt loops are supervised (others IGNORE).
    With supervision="answer_once" (the no-loop baseline, n_loops = 1) the answer is the only target.
    With slots = K > 1 each loop target is a word (a sequence of 1..K ids) and the targets are (B, n_loops, K): the
    word's ids, the end marker (halt_id) in the slot after a word shorter than K, IGNORE beyond it (`word_of`); a
    <HALT> loop is [halt_id, IGNORE, ...].
    """
    if slots > 1:
        target_ids = [[_word_slots(w, halt_id, slots, row) for w in ids] for row, ids in enumerate(target_ids)]
    if supervision == "answer_once":
        if n_loops != 1:
            raise ValueError(f"supervision=answer_once runs one loop, not n_loops={n_loops}")
        return torch.tensor([[ids[-1]] for ids in target_ids], dtype=torch.long)
    if slots == 1:
        out = torch.full((len(target_ids), n_loops), halt_id, dtype=torch.long)
    else:
        out = torch.tensor([halt_id] + [IGNORE] * (slots - 1)).repeat(len(target_ids), n_loops, 1)  # (B, L, K)
    for row, ids in enumerate(target_ids):
        if len(ids) >= n_loops:
            raise ValueError(f"example {row} has {len(ids)} targets; n_loops={n_loops} leaves no loop for <HALT>")
        out[row, : len(ids)] = torch.tensor(ids)
        if supervision == "final":
            out[row, : len(ids) - 1] = IGNORE
    return out


def _word_slots(word, halt_id: int, slots: int, row: int) -> list[int]:
    if not 1 <= len(word) <= slots:
        raise ValueError(f"example {row}: a target of {len(word)} tokens does not fit {slots} slots (1 to {slots})")
    return [*word, halt_id, *[IGNORE] * (slots - len(word) - 1)][:slots]


def loop_loss(logits: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict]:
    """Cross-entropy at every loop, vectorised over batch and loops: the sum over supervised loops / `denominator`
    (default: their count, i.e. the mean); plus the per-loop loss and the hit counts of the n = B examples: per loop
    (`loop_hits`) and of whole traces (`trace_hits`).

    With K slots (logits (B, L, K, V), targets (B, L, K)) it is vectorised over the slots too and every supervised
    slot counts as one target; a loop is a hit when all its supervised slots are."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    ce = ce.view(targets.shape)  # (B, L), or (B, L, K)
    mask = targets != IGNORE
    loss = ce.sum() / (mask.sum().clamp_min(1) if denominator is None else denominator)
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) | ~mask  # (B, L), or (B, L, K)
        ce, count = ce * mask, mask
        if targets.dim() == 3:  # K slots: a loop is a hit when every slot is; its loss is the mean over its slots
            ce, count, correct = ce.sum(-1), mask.sum(-1), correct.all(-1)  # (B, L)
        stats = {
            "per_loop_loss": (ce.sum(0) / count.sum(0).clamp_min(1)).tolist(),
            "loop_hits": correct.sum(0).tolist(),
            "trace_hits": int(correct.all(1).sum()),
            "n": targets.shape[0],
        }
    return loss, stats


def trainable_parameters(model: RLFModel) -> dict[str, nn.Parameter]:
    """Name -> parameter for everything that trains (what a checkpoint stores)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["RLFConfig", "RLFModel", "loops_needed", "loop_targets", "loop_loss", "trainable_parameters", "word_of"]
