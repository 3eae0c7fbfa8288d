"""Training: data -> cached encodings -> the loop model, read top to bottom in `train()`.

A run directory holds `config.json` (the resolved TrainConfig), `train.jsonl`/`val.jsonl` (the exact data),
`metrics.jsonl`, `summary.md`, `model.safetensors` + `model.json` at the end, and `checkpoint/` (weights,
optimizer and schedule state, all safetensors/JSON, written atomically) from which `--resume` continues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rlf import distributed
from rlf.base import Base, load_base
from rlf.cache import EncodedSet, apply_template, encode_cached, tokenize_prompts
from rlf.config import DATA_KEYS, TrainConfig, read_run_config
from rlf.errors import RLFError
from rlf.model import (IGNORE, RLFConfig, RLFModel, chain_loss, copy_loss, loop_loss, loop_targets, loops_needed,
                       position_loss, trainable_parameters)
from rlf.tasks import Example, read_jsonl, target_token_id, target_token_ids, write_jsonl

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- data

@dataclass
class Split:
    """Examples of one split with their cached encodings and per-loop target ids."""

    examples: list[Example]
    encoded: EncodedSet
    target_ids: list[list[int]]  # per example, per loop: the target id; with target_tokens > 1 a tuple of ids
    prompt_ids: list[list[int]] | None = None  # feedback=pointer: each prompt's token ids, as encoded

    def batch(self, idx, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        x, lengths = self.encoded.batch(idx, width)
        return x, lengths, [self.target_ids[i] for i in idx]

    def model_inputs(self, idx, width: int | None = None) -> dict:
        """What the model takes beside a batch's encodings: {} or, for feedback=pointer, its prompt_ids (B, T)."""
        return {} if self.prompt_ids is None else {"prompt_ids": pad_ids([self.prompt_ids[i] for i in idx], width)}


def pad_ids(rows: list[list[int]], width: int | None = None) -> torch.Tensor:
    """Token ids (B, T), -1 past each row's end; T is `width`, or the longest row's length."""
    out = torch.full((len(rows), width or max(map(len, rows))), -1, dtype=torch.long)
    for r, ids in enumerate(rows):
        out[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def target_ids_of(examples: list[Example], tokenizer, source: str, max_tokens: int = 1) -> list[list]:
    """Per-loop target ids (with max_tokens > 1, per loop a tuple of 1 to max_tokens ids); a target that is not one
    token (not 1 to max_tokens tokens) names the example and loop."""
    cache: dict[str, int | tuple[int, ...]] = {}
    out = []
    for n, ex in enumerate(examples, 1):
        ids = []
        for loop, t in enumerate(ex.targets):
            if t not in cache:
                try:
                    cache[t] = (target_token_id(tokenizer, t) if max_tokens == 1
                                else target_token_ids(tokenizer, t, max_tokens))
                except RLFError as e:
                    raise RLFError(f"{source}: example {n} (id {ex.id}), targets[{loop}]: {e}") from None
            ids.append(cache[t])
        out.append(ids)
    return out


def chain_options(cfg: TrainConfig) -> dict:
    """The generator options a config implies (chain's order, distractors and vocabulary pools; graph's words)."""
    if cfg.task == "graph" and cfg.graph_words != "vocab":
        return {"words": cfg.graph_words, "word_tokens": cfg.target_tokens}
    if cfg.task != "chain":
        return {}
    return {"order": cfg.order, "distractors": cfg.distractors, "names": cfg.name_pool, "values": cfg.value_pool}


def make_data(cfg: TrainConfig, tokenizer) -> tuple[list[Example], list[Example]]:
    """Train and val examples: from files when given, else generated (val with a different seed, no shared prompt)."""
    opts = chain_options(cfg)
    if not (cfg.train_file and cfg.val_file):
        from rlf.tasks import generate, parse_hops
    if cfg.train_file:
        train = read_jsonl(cfg.train_file)
    else:
        train = generate(cfg.task, cfg.n_train, parse_hops(cfg.hops), cfg.data_seed, tokenizer, **opts)
    if cfg.val_file:
        val = read_jsonl(cfg.val_file)
    else:
        seen = {ex.prompt for ex in train}
        pool = generate(cfg.task, cfg.n_val * 2, parse_hops(cfg.hops), cfg.data_seed + 7919, tokenizer, **opts)
        val = [ex for ex in pool if ex.prompt not in seen][: cfg.n_val]
    return train, val


def reference_chains(examples: list[Example], tokenizer, template: str, phase: str, supervision: str
                     ) -> list[tuple[torch.Tensor, list[list[int]], torch.Tensor]]:
    """The warm-ups' targets (supervision=lookup, supervision=chains): per example, the token positions where its
    prompt refers to an already assigned name (n,), each one's chain as target ids (the words reached through the
    statements before it), and whether that chain is complete (n,); see rlf.tasks.chain.chain_queries."""
    from rlf.tasks.chain import chain_queries

    out, ids = [], {}
    for n, ex in enumerate(examples, 1):
        text = apply_template(template, ex.prompt)
        spans = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        ends = torch.tensor([end for _, end in spans])
        found = chain_queries(text)
        if not found:
            raise RLFError(f"phase {phase}: supervision={supervision}: example {n} (id {ex.id}) poses no lookup: its "
                           f"prompt has no 'X = Y.' statement referred to later ({ex.prompt[:80]!r})")
        for word in {w for _, chain, _ in found for w in chain} - ids.keys():
            ids[word] = target_token_id(tokenizer, word)
        pos = torch.searchsorted(ends, torch.tensor([end for end, _, _ in found]))  # the token holding the last character
        out.append((pos, [[ids[w] for w in chain] for _, chain, _ in found],
                    torch.tensor([complete for _, _, complete in found])))
    return out


def lookup_pairs(examples: list[Example], tokenizer, template: str, phase: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """supervision=lookup: per example, the token positions where its prompt refers to an already assigned name and
    the id of the word assigned there ((n,), (n,)): the first step of each of `reference_chains`."""
    return [(pos, torch.tensor([chain[0] for chain in chains]))
            for pos, chains, _ in reference_chains(examples, tokenizer, template, phase, "lookup")]


def chain_batch(found: list[tuple[torch.Tensor, list[list[int]], torch.Tensor]], halt_id: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """supervision=chains: a batch's queries (each example's `reference_chains`) as rows (Q,) into the batch,
    positions (Q,) and per-loop targets (Q, L): the chain, then <HALT> if it is complete, IGNORE if it is not
    (it goes on through a statement after the reference)."""
    rows = torch.cat([torch.full((len(pos),), r) for r, (pos, _, _) in enumerate(found)])
    chains = [c for _, cs, _ in found for c in cs]
    complete = torch.cat([done for _, _, done in found])
    targets = loop_targets(chains, halt_id, max(map(len, chains)) + 1)
    lengths = torch.tensor([len(c) for c in chains])
    open_end = ~complete[:, None] & (torch.arange(targets.shape[1])[None, :] >= lengths[:, None])
    return rows, torch.cat([pos for pos, _, _ in found]), targets.masked_fill(open_end, IGNORE)


def prepare_split(examples: list[Example], base: Base, cfg: TrainConfig, name: str, progress: bool) -> Split:
    if not examples:
        raise RLFError(f"{name}: no examples")
    encoded = encode_cached(base, [ex.prompt for ex in examples], cfg.cache_dir, cfg.template, cfg.storage,
                            progress=progress, bf16=cfg.bf16)
    prompt_ids = None
    if cfg.feedback == "pointer":
        prompt_ids = tokenize_prompts(base, cfg.template, [ex.prompt for ex in examples])
        for n, (ids, length) in enumerate(zip(prompt_ids, encoded.lengths), 1):
            if len(ids) != length:  # the cache was written by another tokenizer: the ids would not line up
                raise RLFError(f"{name}: example {n}: {len(ids)} tokens, its cached encoding has {length}; "
                               f"delete the cache entry {encoded.path}")
    targets = target_ids_of(examples, base.tokenizer, name, cfg.target_tokens)
    if cfg.feedback == "pointer":
        hidden = hidden_occurrences(examples, prompt_ids, targets, base.tokenizer, cfg.template)
        if hidden:
            n, word = hidden[0]
            log.warning("%s: in %d of %d prompts a target word is not its own token at every place it occurs "
                        "(first: example %d, %r, e.g. first in the prompt, without the space before it that its "
                        "other occurrences have): feedback=pointer looks a word up by its token, so it cannot find "
                        "it there; a template that starts each prompt with a separator and a space, such as "
                        "'<|endoftext|> {prompt}', avoids it", name, len(hidden), len(examples), n, word)
    if cfg.readout == "copy":  # the copy read-out names words of the prompt before its answer position, nothing else
        for n, (ex, ids, tids) in enumerate(zip(examples, prompt_ids, targets), 1):
            missing = [t for t in tids if t not in ids[:-1]]
            if missing:
                raise RLFError(f"{name}: example {n} (id {ex.id}): target {base.tokenizer.decode(missing[:1])!r} is "
                               f"not a word of its prompt, and readout=copy names only the prompt's words")
    return Split(examples, encoded, targets, prompt_ids)


def hidden_occurrences(examples: list[Example], prompt_ids: list[list[int]], targets: list[list[int]], tokenizer,
                       template: str) -> list[tuple[int, str]]:
    """(example number from 1, word) of each example in which a one-token target word occurs in the prompt's text,
    as a whole word, more often than its token does in the prompt's ids: somewhere the tokenizer split it or merged
    it with a neighbour (with template "{prompt}", the first statement's name `MK` is `M`,`K`, never ` MK`)."""
    words: dict[int, tuple[str, re.Pattern] | None] = {}
    out = []
    for n, (ex, ids, tids) in enumerate(zip(examples, prompt_ids, targets), 1):
        text = apply_template(template, ex.prompt)
        for t in dict.fromkeys(tids):
            if t not in words:
                word = tokenizer.decode([t]).strip()
                words[t] = (word, re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")) if word else None
            if words[t] is not None and len(words[t][1].findall(text)) > ids.count(t):
                out.append((n, words[t][0]))
                break
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- model

def build_model(cfg: TrainConfig, base: Base) -> RLFModel:
    """The loop model for a config, initialised from `cfg.seed` (not the global RNG stream)."""
    mcfg = RLFConfig(
        d_model=base.hidden_size, vocab_size=base.lm_head.shape[0], core=cfg.core, lifeline=cfg.lifeline,
        loop_pos=cfg.loop_pos, max_loops=cfg.max_loops, train_head=cfg.train_head, scratchpad=cfg.scratchpad,
        bridge_rank=cfg.bridge_rank, core_dim=cfg.core_dim, chunk_size=cfg.chunk_size, loop_layers=cfg.loop_layers,
        lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, loop_span=cfg.loop_span,
        core_pos=cfg.core_pos, target_tokens=cfg.target_tokens, feedback=cfg.feedback,
        readout=cfg.readout,
    )
    have = len(base.upper_layers.layers) if base.upper_layers is not None else 0
    if cfg.loop_layers and have != cfg.loop_layers:
        raise RLFError(f"loop_layers={cfg.loop_layers}: the base was loaded with {have} loop layers; load it with "
                       f"load_base({cfg.base!r}, {cfg.encoder_layers}, loop_layers={cfg.loop_layers})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = RLFModel(mcfg, base.lm_head, base.final_norm, base.upper_layers if cfg.loop_layers else None)
    return model.to(base.device)


def make_optimizer(model: RLFModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on the gate, norms, HALT row, scratchpad and loop embedding (1-D or special);
    matrices (core, bridge, LoRA A/B) decay."""
    decay, no_decay = [], []
    for name, p in trainable_parameters(model).items():
        special = any(k in name for k in ("lifeline_gate", "norm", "halt_row", "scratchpad", "loop_embedding"))
        (no_decay if special or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to 10% of lr at max_steps (or at decay_steps, when set)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, (cfg.decay_steps or cfg.max_steps) - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class Phase:
    """A span of training steps [start, end) and the config it trains with (the run's, with the phase's overrides,
    `max_steps` = the phase's length: its warmup and cosine schedule run over the phase)."""

    name: str
    start: int
    end: int
    cfg: TrainConfig
    own_data: bool  # the phase trains on data of its own (train.<name>.jsonl), not the run's train.jsonl


def phase_plan(cfg: TrainConfig) -> list[Phase]:
    """The run's phases in order; a run without `phases` is one phase, `main`, of max_steps."""
    if not cfg.phases:
        return [Phase("main", 0, cfg.max_steps, cfg, False)]
    plan, start = [], 0
    for ph in cfg.phases:
        steps = ph.get("steps", cfg.max_steps - start)  # only the last phase may leave it out
        pcfg = dataclasses.replace(cfg, **ph["overrides"], phases=None, max_steps=steps)
        plan.append(Phase(ph["name"], start, start + steps, pcfg, any(k in ph["overrides"] for k in DATA_KEYS)))
        start += steps
    return plan


def phase_at(plan: list[Phase], step: int) -> Phase:
    return next((ph for ph in plan if ph.start <= step < ph.end), plan[-1])


def batch_order(sizes: list[int], batch_size: int, seed: int, step: int, bucket: int = 8) -> list[int]:
    """The example indices of a step, derived from (seed, epoch) alone so a resumed run sees the same batches.

    Each epoch is a fresh permutation cut into windows of `bucket` batches; inside a window examples are sorted
    by `sizes` (the number of loop targets), so a batch needs few loops and little padding; batches are then
    shuffled so the sizes still mix across steps.
    """
    n = len(sizes)
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)[: per_epoch * batch_size].tolist()
    window = batch_size * bucket
    batches = []
    for w in range(0, len(perm), window):
        chunk = sorted(perm[w : w + window], key=lambda i: sizes[i])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return batches[order[k]]


# ----------------------------------------------------------------------------------------------- checkpoints

def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    """Replace a small file all at once: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    _fsync_write(tmp, text.encode())
    os.replace(tmp, path)


def _save_weights_atomic(model: RLFModel, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in trainable_parameters(model).items()}, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(run: Path, model: RLFModel, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write checkpoint/ atomically: build checkpoint.tmp/, fsync, then swap it in with renames."""
    tmp, final, old = run / "checkpoint.tmp", run / "checkpoint", run / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in trainable_parameters(model).items()}, tmp / "model.safetensors")
    opt_sd = opt.state_dict()
    tensors = {f"{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
               for pid, st in opt_sd["state"].items() for k, v in st.items()}
    save_file(tensors, tmp / "optimizer.safetensors")
    state = dict(state, param_groups=[{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
                                      for g in opt_sd["param_groups"]])
    _fsync_write(tmp / "state.json", json.dumps(state).encode())
    for f in ("model.safetensors", "optimizer.safetensors"):
        with open(tmp / f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    dfd = os.open(run, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def latest_checkpoint(run: Path) -> Path | None:
    """checkpoint/, or checkpoint.old/ if a swap was interrupted between its two renames; None if neither."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run / name / "state.json").is_file():
            return run / name
    return None


def load_checkpoint(run: Path, model: RLFModel, opt: torch.optim.Optimizer) -> dict:
    """Restore weights and optimizer from the latest checkpoint (safetensors + JSON only: nothing executes)."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise RLFError(f"{run}: no checkpoint to resume from (expected {run / 'checkpoint'}/state.json)")
    load_weights(model, ckpt / "model.safetensors")
    part = ckpt / "state.json"
    try:  # JSON, safetensors and torch each raise their own types for a damaged file
        state = json.loads(part.read_text())
        part = ckpt / "optimizer.safetensors"
        opt_state: dict = {}
        for key, v in load_file(part).items():
            pid, k = key.split(".", 1)
            opt_state.setdefault(int(pid), {})[k] = v
        opt.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    except Exception as e:
        raise RLFError(f"{part}: damaged or from another model, cannot resume ({type(e).__name__}: {e})") from None
    return state


def load_weights(model: RLFModel, path: Path) -> None:
    """Load trainable weights from a safetensors file; missing or unexpected names are an error."""
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise RLFError(f"{path}: not a valid safetensors file ({e})") from None
    expected = trainable_parameters(model)
    if set(tensors) != set(expected):
        raise RLFError(f"{path}: weights do not match the model: missing {sorted(set(expected) - set(tensors))}, "
                       f"unexpected {sorted(set(tensors) - set(expected))}")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(tensors[k])


# ----------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def validate(model: RLFModel, split: Split, batch_size: int = 64, supervision: str = "per_loop") -> dict:
    """Trace accuracy (every loop right and <HALT> at the right loop) and answer accuracy on a split.

    With supervision="answer_once" (no loop) the trace is the answer at loop 1: both accuracies are that.
    """
    model.eval()
    n_trace = n_answer = 0
    n = len(split.examples)
    scored = "answer_once" if supervision == "answer_once" else "per_loop"  # every loop counts, however trained
    for i in distributed.join().shard(range(0, n, batch_size)):  # under torchrun: this rank's batches; counts summed
        idx = list(range(i, min(i + batch_size, n)))
        x, lengths, tids = split.batch(idx)
        n_loops = loops_needed(tids, supervision)
        logits = model(x.to(model.lm_head.device), lengths, n_loops, **split.model_inputs(idx))
        slots = logits.shape[2] if logits.dim() == 4 else 1  # (B, L, K, V + 1) with K read-out slots
        targets = loop_targets(tids, model.halt_id, n_loops, scored, slots)
        hit = (logits.argmax(-1).cpu() == targets) | (targets == IGNORE)  # (B, L), or (B, L, K)
        if hit.dim() == 3:
            hit = hit.all(-1)  # a loop is right when every slot of its word is
        if supervision == "answer_once":
            hits = int(hit[:, 0].sum())
            n_trace, n_answer = n_trace + hits, n_answer + hits
            continue
        for row, t in enumerate(tids):
            k = len(t)
            n_trace += bool(hit[row, : k + 1].all())
            n_answer += bool(hit[row, k - 1])
    model.train()
    n_trace, n_answer = map(int, distributed.all_sum([n_trace, n_answer]))
    return {"val_trace_acc": n_trace / n, "val_answer_acc": n_answer / n, "val_n": n}


# ----------------------------------------------------------------------------------------------- the loop

def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _keep_metrics_until(path: Path, step: int) -> None:
    """Keep the metric records up to `step` (and drop a line cut short by a kill)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    _write_atomic(path, "".join(keep))


DDP_ARGS = inspect.signature(DistributedDataParallel).parameters


class TrainStep(nn.Module):
    """`fn(model, *args)` as one module call. DistributedDataParallel averages the gradients of what runs through the
    forward of the module it wraps, and a step runs either the loop (`RLFModel.__call__`) or the copy warm-up."""

    def __init__(self, model: RLFModel):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def check_batch_split(cfg: TrainConfig, plan: list[Phase], world_size: int) -> None:
    """Each rank trains on batch_size / world_size examples of every global batch: refuse a batch that won't split."""
    for ph in plan:
        b = ph.cfg.batch_size
        if b % world_size:
            where = f" (phase {ph.name!r})" if cfg.phases else ""
            near = [m for m in (b - b % world_size, b - b % world_size + world_size) if m > 0]
            raise RLFError(f"batch_size={b}{where}: the global batch is split evenly over the {world_size} processes; "
                           f"use a multiple of {world_size}, e.g. {' or '.join(map(str, near))}")


def _changes_digest(saved: TrainConfig, cfg: TrainConfig, key: str) -> bool:
    """Whether cfg's value of `key` alone changes saved's digest; a value valid only with the other changes (phases
    that need a new max_steps) changes it too."""
    try:
        return dataclasses.replace(saved, **{key: getattr(cfg, key)}).digest() != saved.digest()
    except RLFError:
        return True


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, force: bool = False, progress: bool = True,
          base: Base | None = None) -> dict:
    """Train an RLF model into run directory `out`; with resume=True continue from its checkpoint.

    Under torchrun each process trains on its share of every global batch (DistributedDataParallel) and rank 0
    alone writes the run directory; the result is the one-process run's up to float reduction order."""
    run = Path(out)
    world = distributed.join()
    progress = progress and world.main
    if resume:
        saved = read_run_config(run)
        if saved.digest() != cfg.digest():
            changed = [k for k, v in saved.to_dict().items() if getattr(cfg, k) != v and _changes_digest(saved, cfg, k)]
            what = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(cfg, k)!r}" for k in changed)
            if not force:
                raise RLFError(f"{run}: the config differs from the one the run started with ({what}); "
                               "resume without those overrides, or pass --force to continue with them")
            log.warning("%s: continuing with a changed config (%s), as forced", run, what)
    elif (run / "config.json").exists():
        raise RLFError(f"{run} already holds a run; use `rlf train --resume {run}` or choose another --out")
    elif run.exists() and not run.is_dir():
        raise RLFError(f"--out {run}: exists and is not a directory")

    if cfg.readout == "copy" and any(ph.cfg.supervision == "chains" for ph in phase_plan(cfg)):
        raise RLFError("config: supervision=chains cuts prompts at references, before their values' statements, and "
                       "readout=copy names only words before the cut: use the lookup warm-up with it")
    if cfg.supervision in ("copy", "lookup", "chains"):
        raise RLFError(f"config: supervision={cfg.supervision} is a warm-up: set it in a phase (phases: [{{name: warm, "
                       f"steps: 200, overrides: {{supervision: {cfg.supervision}}}}}, {{name: main}}]), not for the "
                       f"whole run")
    plan = phase_plan(cfg)
    check_batch_split(cfg, plan, world.size)
    data_files = ["train", "val"] + [f"train.{ph.name}" for ph in plan if ph.own_data]
    torch.manual_seed(cfg.seed)
    base = base or load_base(cfg.base, cfg.encoder_layers, device=cfg.device, loop_layers=cfg.loop_layers)

    def set_up() -> dict:
        """The run's data files (a new run's, made now; a resumed run's, checked); their digests."""
        run.mkdir(parents=True, exist_ok=True)
        if resume:  # the exact data the run started with; a phase added on a forced resume gets its data now
            if force:
                for ph in plan:
                    if ph.own_data and not (run / f"train.{ph.name}.jsonl").is_file():
                        write_jsonl(make_data(ph.cfg, base.tokenizer)[0], run / f"train.{ph.name}.jsonl")
            try:
                digests = json.loads((run / "data.json").read_text())
            except (OSError, ValueError):
                digests = {}
            now = {k: file_digest(run / f"{k}.jsonl") if (run / f"{k}.jsonl").is_file() else None for k in data_files}
            changed = [f"{k}.jsonl (sha256 {digests.get(k)} -> {now[k]})" for k in now if digests.get(k) != now[k]]
            if changed and not force:
                raise RLFError(f"{run}: {' and '.join(changed)} changed since the run started; restore the data, "
                               "or pass --force to continue on the changed data")
            if changed:
                log.warning("%s: continuing on changed data (%s), as forced", run, ", ".join(changed))
            return now
        train_ex, val_ex = make_data(cfg, base.tokenizer)
        write_jsonl(train_ex, run / "train.jsonl")
        write_jsonl(val_ex, run / "val.jsonl")
        for ph in plan:
            if ph.own_data:
                write_jsonl(make_data(ph.cfg, base.tokenizer)[0], run / f"train.{ph.name}.jsonl")
        now = {k: file_digest(run / f"{k}.jsonl") for k in data_files}
        _write_atomic(run / "data.json", json.dumps(now))
        return now

    now = distributed.main_first(set_up)  # rank 0 writes, then every rank reads the same files
    distributed.must_see(run / "train.jsonl", "the run's training data")
    train_ex, val_ex = read_jsonl(run / "train.jsonl"), read_jsonl(run / "val.jsonl")
    t_encode = time.perf_counter()
    users = {} if resume else {"train": cfg.train_file, "val": cfg.val_file}  # errors name the file given, if any
    train_split = prepare_split(train_ex, base, cfg, str(users.get("train") or run / "train.jsonl"), progress)
    val_split = prepare_split(val_ex, base, cfg, str(users.get("val") or run / "val.jsonl"), progress)
    splits = {ph.name: prepare_split(read_jsonl(run / f"train.{ph.name}.jsonl"), base, cfg,
                                     str(run / f"train.{ph.name}.jsonl"), progress) if ph.own_data else train_split
              for ph in plan}
    encode_s = time.perf_counter() - t_encode
    distinct = {id(sp): sp for sp in [train_split, val_split, *splits.values()]}.values()
    builds = [sp.encoded.build_seconds for sp in distinct]
    encode_cost = None if None in builds else round(sum(builds), 1)  # what encoding costs without a cache hit
    if not resume and world.main:  # last, once the data is known to be usable: config.json is what makes this a run
        _write_atomic(run / "config.json", json.dumps(cfg.to_dict(), indent=2))

    model = build_model(cfg, base)
    opt = make_optimizer(model, cfg)
    state = {"step": 0, "good_checks": 0, "bad_steps": 0, "skipped_steps": 0, "train_seconds": 0.0,
             "best_val_trace_acc": 0.0, "config_digest": cfg.digest(), "stopped": None, "world_size": world.size}
    if resume and latest_checkpoint(run) is None:
        log.warning("%s: stopped before its first checkpoint: starting again from step 0", run)
    elif resume:
        state.update(load_checkpoint(run, model, opt))
        log.info("resumed %s at step %d", run, state["step"])
        if state["world_size"] != world.size:  # the batches do not depend on it: see check_batch_split, batch_order
            log.info("%s: trained on %d processes so far, now on %d: every step still trains on the same global "
                     "batch, so the run goes on as it would have (up to float reduction order)", run,
                     state["world_size"], world.size)
            state["world_size"] = world.size
    if resume and world.main:  # the checkpoint fits: record what the rest is trained with, drop metrics to be redone
        _write_atomic(run / "config.json", json.dumps(cfg.to_dict(), indent=2))
        _write_atomic(run / "data.json", json.dumps(now))
        _keep_metrics_until(run / "metrics.jsonl", state["step"])
    if world.main:
        (run / "model.json").write_text(json.dumps(model.cfg.to_dict(), indent=2))

    device = base.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)  # parameters stay float32
    if cfg.bf16 and device.type == "cpu" and not native_cpu_bf16():
        log.warning("bf16=true on a CPU without native bfloat16 arithmetic (AVX512-BF16 or AMX): it can be slower "
                    "than float32 here; bf16=false trains the same recipe in float32")
    step_fn = TrainStep(model)
    if world.size > 1:  # the buffers are the frozen LM head, the same on every rank: not synced every step
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in DDP_ARGS else "broadcast_buffers"  # torch < 2.13
        step_fn = DistributedDataParallel(step_fn, device_ids=[device.index] if device.type == "cuda" else None,
                                          **{no_sync: False})
    metrics_path = run / "metrics.jsonl"
    sizes = {name: [len(t) for t in sp.target_ids] for name, sp in splits.items()}
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    t_last, examples_since = time.perf_counter(), 0
    warmup_targets: dict[str, object] = {}  # per warm-up phase, built once: copy's token ids, lookup's pairs, chains'
    while state["step"] < cfg.max_steps and state["stopped"] is None:
        step = state["step"]
        ph = phase_at(plan, step)
        pcfg, sp = ph.cfg, splits[ph.name]
        if cfg.phases:
            bar.set_description(f"train [{ph.name}]", refresh=False)
        t0 = time.perf_counter()
        idx = batch_order(sizes[ph.name], pcfg.batch_size, cfg.seed, step - ph.start)  # the same on every rank
        mine = world.shard(idx)  # this rank's part of it, padded as the whole batch would be
        width = int(sp.encoded.lengths[idx].max())
        x, lengths, _ = sp.batch(mine, width)
        tids = [sp.target_ids[i] for i in idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(step - ph.start, pcfg)
        opt.param_groups[0]["weight_decay"] = pcfg.weight_decay  # the decayed group (make_optimizer's first)
        if pcfg.supervision == "copy":
            if ph.name not in warmup_targets:  # the phase's prompts as the base encoded them, ids end to end, once
                ids = sp.prompt_ids or tokenize_prompts(base, cfg.template, [ex.prompt for ex in sp.examples])
                starts = torch.tensor([0, *map(len, ids)]).cumsum(0)[:-1]
                warmup_targets[ph.name] = (torch.tensor([t for row in ids for t in row]), starts)
            flat, starts = warmup_targets[ph.name]
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
            uniform = world.shard(torch.rand(len(idx), pcfg.copy_positions, generator=gen))
            with autocast:
                loss, stats = step_fn(copy_loss, x.to(device), lengths, flat, starts[mine], uniform)
        elif pcfg.supervision == "lookup":
            if ph.name not in warmup_targets:
                warmup_targets[ph.name] = lookup_pairs(sp.examples, base.tokenizer, cfg.template, ph.name)
            pairs = [warmup_targets[ph.name][i] for i in mine]
            rows = torch.cat([torch.full((len(p),), r) for r, (p, _) in enumerate(pairs)])
            with autocast:
                loss, stats = step_fn(position_loss, x.to(device), lengths, rows,
                                      torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs]))
        elif pcfg.supervision == "chains":
            if ph.name not in warmup_targets:
                warmup_targets[ph.name] = reference_chains(sp.examples, base.tokenizer, cfg.template, ph.name,
                                                           "chains")
            rows, pos, targets = chain_batch([warmup_targets[ph.name][i] for i in mine], model.halt_id)
            with autocast:
                loss, stats = step_fn(chain_loss, x.to(device), rows, pos, targets.to(device),
                                      **sp.model_inputs(mine, width))
        else:
            n_loops = loops_needed(tids, pcfg.supervision, pcfg.extra_halt_loops)
            targets = loop_targets(tids, model.halt_id, n_loops, pcfg.supervision, cfg.target_tokens)
            # DDP averages the ranks' gradients: each rank's loss is its sum over the global batch's count / ranks
            share = (targets != IGNORE).sum() / world.size
            extra = sp.model_inputs(mine, width)  # feedback=pointer: the prompt ids
            if extra and pcfg.supervision == "per_loop":  # teacher forcing: each loop fed the key of the right word
                extra["teacher"] = world.shard(targets).to(device)
            with autocast:
                logits = step_fn(RLFModel.__call__, x.to(device), lengths, n_loops, **extra)
            loss, stats = loop_loss(logits, world.shard(targets).to(device), share)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(trainable_parameters(model).values()), pcfg.grad_clip)
        # the whole batch's loss and hit counts (each rank has its part): once a step, outside the loop
        total_loss, trace_hits, n, *loop_hits = distributed.all_sum(
            [loss.item(), stats["trace_hits"], stats["n"], *stats["loop_hits"]])
        total_loss /= world.size
        if not (math.isfinite(total_loss) and torch.isfinite(grad_norm)):
            state["bad_steps"] += 1
            state["skipped_steps"] += 1
            log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s): step skipped",
                        step, total_loss, grad_norm.item())
            if state["bad_steps"] >= cfg.max_bad_steps:
                state["stopped"] = f"non-finite: {state['bad_steps']} consecutive non-finite steps at step {step}"
                break
        else:
            state["bad_steps"] = 0
            opt.step()
        state["step"] = step = step + 1
        state["train_seconds"] += time.perf_counter() - t0
        examples_since += len(idx)
        bar.update(1)
        if world.main and (step % cfg.log_every == 0 or step == cfg.max_steps):
            rate = examples_since / (time.perf_counter() - t_last)
            t_last, examples_since = time.perf_counter(), 0
            rec = {"step": step, **({"phase": ph.name} if cfg.phases else {}), "loss": total_loss,
                   "trace_acc": trace_hits / n, "lr": lr_at(step - 1 - ph.start, pcfg),
                   "grad_norm": grad_norm.item(), "examples_per_s": rate, "skipped_steps": state["skipped_steps"],
                   "per_loop_acc": [round(h / n, 4) for h in loop_hits]}
            _append_jsonl(metrics_path, rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['trace_acc']:.2f}", ex_s=f"{rate:.0f}")
        if step % cfg.val_every == 0 or step == cfg.max_steps:
            val = validate(model, val_split, supervision=cfg.supervision)
            state["best_val_trace_acc"] = max(state["best_val_trace_acc"], val["val_trace_acc"])
            state["good_checks"] = state["good_checks"] + 1 if val["val_trace_acc"] >= cfg.early_stop_acc else 0
            if world.main:
                _append_jsonl(metrics_path, {"step": step, **val, "train_seconds": state["train_seconds"]})
                bar.write(f"step {step}: val trace acc {val['val_trace_acc']:.4f}, "
                          f"answer acc {val['val_answer_acc']:.4f}")
            if cfg.early_stop_patience and state["good_checks"] >= cfg.early_stop_patience:
                state["stopped"] = f"early stop: val trace acc >= {cfg.early_stop_acc} at {state['good_checks']} checks"
        if world.main and (step % cfg.ckpt_every == 0 or step == cfg.max_steps or state["stopped"]):
            save_checkpoint(run, model, opt, state)
    bar.close()
    if state["stopped"] and state["stopped"].startswith("non-finite"):
        distributed.main_first(lambda: save_checkpoint(run, model, opt, state))
        raise RLFError(f"training stopped: {state['stopped']} (lower lr or check the data); checkpoint kept in {run}")

    final = validate(model, val_split, supervision=cfg.supervision)
    summary = {"run": str(run), "steps": state["step"], "stopped": state["stopped"] or "max_steps",
               "train_seconds": round(state["train_seconds"], 1), "encode_seconds": round(encode_s, 1),
               "encode_cost_seconds": encode_cost,
               "examples_per_s": round(state["step"] * cfg.batch_size / max(state["train_seconds"], 1e-9), 1),
               "skipped_steps": state["skipped_steps"], **peak_memory_mb(device), **final}

    def write_results() -> None:
        _save_weights_atomic(model, run / "model.safetensors")
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
        (run / "summary.md").write_text(
            "# Training summary\n\n| field | value |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in summary.items())
        )

    distributed.main_first(write_results)  # every rank returns once the run directory is complete
    return summary


def peak_memory_mb(device: torch.device) -> dict:
    """This process's peak resident memory (base, encodings and training: the whole run), and on CUDA the peak
    tensor memory. (After a resume, the peak of the resumed process only.)"""
    rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"peak_rss_mb": round(rss_bytes / 2**20, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def train_or_reuse(cfg: TrainConfig, out: Path, base: Base | None = None) -> dict:
    """Train into `out`; reuse a finished run with the same config, resume an unfinished one.

    The saved config is read as a TrainConfig, so a run saved before a config key existed (the key at its default)
    is the same config. A finished run is reused only with exactly its config; an unfinished one also resumes
    with a change of how long, where or how often (the keys `TrainConfig.digest` leaves out), e.g. a lower
    max_steps to end an interrupted run where its last checkpoint stands."""
    finished = (out / "model.safetensors").is_file() and (out / "summary.json").is_file()
    if (out / "config.json").is_file():
        saved = read_run_config(out)
        if saved.to_dict() != cfg.to_dict() if finished else saved.digest() != cfg.digest():
            raise RLFError(f"{out} holds a run with another config; use another --out or remove it")
    if finished:
        log.info("reusing the trained run in %s", out)
        return json.loads((out / "summary.json").read_text())
    if (out / "config.json").is_file() and latest_checkpoint(out) is None:
        raise RLFError(f"{out} holds a run that stopped before its first checkpoint; remove it or use another --out")
    return train(cfg, out, resume=(out / "config.json").is_file(), base=base)


def native_cpu_bf16() -> bool:
    """Whether this CPU does bfloat16 matrix arithmetic natively (oneDNN's own check: AVX512-BF16 or AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check and check())


# ----------------------------------------------------------------------------------------------- loading

@dataclass
class LoadedRun:
    """A trained run ready to use: `solve(prompts)` returns loop-by-loop traces."""

    config: TrainConfig
    model: RLFModel
    base: Base

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths, _ = self.encode_with_ids(prompts)
        return x, lengths

    def encode_with_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The prompts' encodings and lengths, and what the model takes beside them (as `Split.model_inputs`)."""
        for p in prompts:
            if not p.strip():
                raise RLFError("empty prompt: give the problem text, e.g. \"K = moon. P = K. What is P?\"")
        ids = tokenize_prompts(self.base, self.config.template, prompts)
        limit = getattr(self.base.model.config, "max_position_embeddings", None)
        for p, x in zip(prompts, ids):
            if limit and len(x) > limit:
                raise RLFError(f"prompt of {len(x)} tokens is longer than the base's limit of {limit}: {p[:60]!r}...")
        x, lengths = self.base.encode_ids(ids, self.config.bf16)  # as the run's prompts were encoded
        return x, lengths, ({"prompt_ids": pad_ids(ids, x.shape[1])} if self.config.feedback == "pointer" else {})

    def solve(self, prompts: list[str], max_loops: int | None = None, **ablation) -> list[list[dict]]:
        """Per prompt, the loop-by-loop trace: loop, token, p, p_halt (stops after <HALT>).

        With target_tokens > 1, `token` is the loop's whole word, `tokens` its pieces and `p` the word's probability
        (the product of its slots' probabilities, the end marker's included)."""
        x, lengths, extra = self.encode_with_ids(prompts)
        out = self.model.solve(x, lengths, max_loops, **extra, **ablation)
        halt = self.model.halt_id
        traces = []
        for b in range(len(prompts)):
            trace = []
            for i in range(out["tokens"].shape[1]):
                tok = int(out["tokens"][b, i])
                words = "words" in out
                pieces = [t for t in out["words"][b, i].tolist() if t not in (halt, IGNORE)] if words else [tok]
                step = {"loop": i + 1, "token": "<HALT>" if tok == halt else self.base.tokenizer.decode(pieces).strip(),
                        "p": float(out["p_word" if words else "p"][b, i]), "p_halt": float(out["p_halt"][b, i])}
                if words:
                    step["tokens"] = [self.base.tokenizer.decode([t]) for t in pieces]
                trace.append(step)
                if tok == halt:
                    break
            traces.append(trace)
        return traces


def load_run(path: str | Path, device: str = "auto", base: Base | None = None) -> LoadedRun:
    """Load a trained run directory (config.json + model.safetensors, or its latest checkpoint)."""
    run = Path(path)
    cfg = read_run_config(run)
    base = base or load_base(cfg.base, cfg.encoder_layers, device=device, loop_layers=cfg.loop_layers)
    model = build_model(cfg, base)
    weights = run / "model.safetensors"
    if not weights.is_file():
        weights = run / "checkpoint" / "model.safetensors"
    if not weights.is_file():
        raise RLFError(f"{run}: no model.safetensors and no checkpoint yet")
    load_weights(model, weights)
    model.eval()
    return LoadedRun(cfg, model, base)
