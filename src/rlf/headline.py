"""`rlf bench headline`: the seeds' headline table, measured here, for the Mamba2 and Transformer cores.

For each protocol — `forward` (the seeds': statements in chain order) and `backward` with distractors (genuine
pointer chasing) — both cores are trained on identical data and hyperparameters (one preset, the same
overrides; only `core` differs) and measured the same way on the same held-out sets: in-distribution and
per-hop OOD trace accuracy, halt precision, the lifeline severed at inference (gate = 0), inference memory
per loop (in a fresh process), steps to 99%, throughput. Beside them, as baselines on the same prompts:
the frozen base alone (all its layers, the first word of its greedy generation) and a no-loop model (the
core applied once, trained with the answer as its only target: `supervision=answer_once`). Two stability
measurements: the loop forced to run twice the needed loops without stopping at `<HALT>` (halting must be
absorbing, the answer must not change), and per hop count the loop at which `<HALT>` first fires. Then a
component ablation table (lifeline, loop position, supervision) on the first core and protocol.

Every trained model is a run directory inside `--out`; a finished run is reused, an interrupted one
resumed, and every measurement of a run is cached beside it (keyed by the weights and the settings), so
rerunning after an interruption continues where it stopped. The numbers go to `--out/headline.json`;
`--docs` (docs/RESULTS.md) and its per-hop plot are generated from them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlf.base import Base, load_base
from rlf.bench_memory import bench_memory, memory_in_fresh_process
from rlf.cache import apply_template
from rlf.config import TrainConfig, load_config
from rlf.errors import RLFError
from rlf.evaluate import eval_sets, evaluate, fmt_rate, md_table, rate, run_solve, score, train_hops
from rlf.model import RLFModel, loop_targets
from rlf.tasks import Example, parse_hops, read_jsonl
from rlf.train import (LoadedRun, Split, _write_atomic, file_digest, load_run, prepare_split, target_ids_of,
                       train_or_reuse)

log = logging.getLogger(__name__)

PROTOCOLS = {  # config overrides of each protocol; backward also gets `distractors=--distractors`
    "forward": ["order=forward"],
    "backward": ["order=backward"],
}
CORES = ("mamba2", "transformer", "mamba1")
ABLATIONS = ("lifeline=scalar", "lifeline=none", "loop_pos=learned", "loop_pos=learned max_loops=4", "loop_pos=none",
             "supervision=final")  # max_loops=4: the learned loop position stops at loop 4: no clock to count on past it
NO_LOOP = "supervision=answer_once"
TOOL_KEYS = ("core", "order", "distractors")  # set by --cores, --protocols and --distractors, not by overrides
FORCED_FACTOR = 2  # the stability check runs the loop this many times the needed loops
CLOCK_OFFSET = 3  # the loop-clock probe: loop i sees loop position i + this
CLOCK_HOLD = 3  # the clock held at inference: every loop after the 4th sees the 4th loop's position (`--ablate
# clamp=3`). 3 was chosen on 7-, 9- and 12-hop dev chains of the presets (README, "The loop clock"), not on test hops
TARGET_ACC = 0.99  # "steps to 99%": the first validation at or above this trace accuracy
LOGIT_BUDGET = 256 * 2**20  # bytes of (B, L, V + 1) float32 logits one forced-loop batch may hold


def protocol_overrides(protocol: str, distractors: int) -> list[str]:
    """The config overrides of a protocol."""
    return PROTOCOLS[protocol] + ([f"distractors={distractors}"] if protocol == "backward" else [])


SIZES = {
    "full": {"preset": "default", "train": [], "n": 1000, "ood_hops": "6,8,10,16,32",
             "memory_loops": (1, 2, 4, 8, 16, 32, 64), "memory_batch": 16, "fresh_memory": True,
             "out": "runs/headline", "docs": "docs/RESULTS.md"},
    "quick": {"preset": "tiny", "train": ["n_train=96", "n_val=16", "hops=1-2", "batch_size=16", "max_steps=6",
                                          "warmup_steps=2", "val_every=3", "ckpt_every=6", "log_every=3"],
              "n": 6, "ood_hops": "3,4", "memory_loops": (1, 2, 4), "memory_batch": 4,
              "fresh_memory": False,  # in this process: a fresh one costs ~10 s of imports, and quick numbers are moot
              "out": "runs/headline-quick",
              "docs": None},  # None: RESULTS.md inside --out (a quick run must not overwrite docs/RESULTS.md)
}

# What SPEC.md states of the seeds' results (its §1 and §5) and the measured reference point of its §6 (the
# seeds' recipe on a 2-core CPU, Mamba2 core, forward chains of 1-5 hops). The spec gives no other cell.
SEEDS = {
    "zero_agreement": "SSM: 9/10 loops identical; attention: not removable",
    "memory_growth": "O(1) per loop (required)",
    "steps_to_target": "≈ 0 until step ~300, 90% at step 600 (§6 reference, Mamba2)",
    "examples_per_s": "≈ 7.6 (4.2 s per step of 32; §6 reference, Mamba2)",
}

GEN_TOKENS = 4  # greedy tokens the base alone may generate before its first word counts as its answer

DEFINITIONS = {
    "trace accuracy": "every loop target right and <HALT> at exactly the target loop (see `rlf eval`)",
    "answer accuracy": "the answer token is right: for the loop models the token just before the first <HALT>; for "
                       f"the base alone the first word of its greedy generation ({GEN_TOKENS} tokens) after the "
                       "prompt (in the run's template, and as a chat user turn when the tokenizer has a chat "
                       "template); "
                       "for the no-loop model its top-1 token after one pass of the core",
    "halt precision": "of the examples that emit <HALT>, the fraction whose first <HALT> is at the target loop",
    "lifeline at 0": "the lifeline gate scaled by 0 at inference (in distribution): trace accuracy, and loop "
                     "agreement = over (example, target loop) pairs, the fraction whose top-1 equals the intact "
                     "model's",
    "forced loops": f"the loop run {FORCED_FACTOR} x (target halt loop) times without stopping at <HALT>; "
                    "`forced trace accuracy` = trace right and every later loop <HALT>; `halt absorbing` = of the "
                    "examples that halt, every loop after the first <HALT> is <HALT>; `answer unchanged` = of the "
                    "examples that halt, the last non-<HALT> token of the whole run is the answer read at the halt",
    "loop clock moved ahead": f"in distribution, loop i given the loop position i + {CLOCK_OFFSET} (`rlf eval "
                              f"--ablate offset={CLOCK_OFFSET}`): the fraction of chains whose first <HALT> comes "
                              "before the target loop. A model that halts by counting loops on the loop position "
                              "halts early; one that halts by what it has read does not",
    "loop clock held": f"out of distribution, every loop after loop {CLOCK_HOLD + 1} given loop {CLOCK_HOLD + 1}'s "
                       f"loop position at inference (`rlf eval --ablate clamp={CLOCK_HOLD}`, `rlf solve --loop-clamp "
                       f"{CLOCK_HOLD}`); {CLOCK_HOLD} was chosen on 7-, 9- and 12-hop dev chains, not on these hop "
                       "counts",
    "first <HALT> loop": "per hop count, how many examples first emit <HALT> at each loop (1-based); the target "
                         "loop is (number of loop targets) + 1 = hops + 2 for chains",
    "peak memory": "peak inference memory of one `solve` batch at the largest loop count, measured by `rlf bench "
                   "memory` in a fresh process (with --quick: in this one); growth per loop = least-squares slope "
                   "over loop counts >= 2",
    "steps to 99%": f"the first validation step whose val trace accuracy is >= {TARGET_ACC} (metrics.jsonl)",
    "training wall time": "the summed time of the training steps (without encoding and validation)",
    "examples/s": "training examples per second of step time",
    "tokens/s": "examples/s x the mean prompt length in tokens of the training set (the template applied)",
    "ci95": "rates are `rate [95% Wilson interval] (count/n)`",
}


# ----------------------------------------------------------------------------------------------- pure measurements

def stability_outcomes(tokens: np.ndarray, target_ids: list[list[int]], halt_id: int) -> dict[str, np.ndarray]:
    """Per example, from the top-1 ids (N, L) of a loop run past <HALT> (-1 where a loop was not run).

    Returns `first_halt` (0-based loop of the first <HALT>, -1 if none), `halted`, `trace_ok` (the k targets,
    then <HALT> at loop k + 1), `absorbing` (halted, and every later loop that ran is <HALT>),
    `answer_unchanged` (halted after at least one loop, and the last non-<HALT> token of the run is the token
    just before the first <HALT>) and `forced_ok` (trace_ok and absorbing).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    k = np.array([len(t) for t in target_ids])
    width = int(k.max()) + 1
    if tokens.shape[1] < width:
        tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=-1)
    n, loops = tokens.shape
    rows, cols = np.arange(n), np.arange(loops)[None, :]
    ran, is_halt = tokens >= 0, tokens == halt_id
    halted = is_halt.any(1)
    first = np.where(halted, is_halt.argmax(1), -1)
    after_halt = halted[:, None] & (cols > first[:, None]) & ran
    absorbing = halted & ~(after_halt & ~is_halt).any(1)
    word = ran & ~is_halt  # loops that emitted a token other than <HALT>
    last_word = np.where(word.any(1), loops - 1 - word[:, ::-1].argmax(1), -1)
    before_halt = tokens[rows, np.maximum(first - 1, 0)]
    answer_unchanged = (first >= 1) & (last_word >= 0) & (tokens[rows, np.maximum(last_word, 0)] == before_halt)
    targets = loop_targets(target_ids, halt_id, width).numpy()  # (N, K + 1)
    mask = np.arange(width)[None, :] <= k[:, None]
    trace_ok = ((tokens[:, :width] == targets) | ~mask).all(1)
    return {"first_halt": first, "halted": halted, "trace_ok": trace_ok, "absorbing": absorbing,
            "answer_unchanged": answer_unchanged, "forced_ok": trace_ok & absorbing, "k": k}


def summarize_stability(s: dict[str, np.ndarray], select: np.ndarray | None = None) -> dict:
    """Rates of `stability_outcomes` (optionally on a boolean subset)."""
    if select is not None:
        s = {key: v[select] for key, v in s.items()}
    n, halted = len(s["k"]), int(s["halted"].sum())
    return {"n": n, "forced_trace_acc": rate(s["forced_ok"].sum(), n), "trace_acc": rate(s["trace_ok"].sum(), n),
            "halt_absorbing": rate(s["absorbing"].sum(), halted),
            "answer_unchanged": rate(s["answer_unchanged"].sum(), halted)}


def halt_histogram(first_halt: np.ndarray, n_targets: np.ndarray, hops: np.ndarray) -> dict[str, dict]:
    """Per hop count: counts of the loop (1-based, or "never") at which <HALT> first fires, the target loop(s),
    and the rates of halting early (before the target loop), at it, late, or never."""
    out = {}
    for h in np.unique(hops):
        sel = hops == h
        first, k = first_halt[sel], n_targets[sel]
        counts = Counter(int(f) + 1 for f in first if f >= 0)
        hist = {str(loop): counts[loop] for loop in sorted(counts)}
        if (first < 0).any():
            hist["never"] = int((first < 0).sum())
        n = int(sel.sum())
        out[str(int(h))] = {
            "n": n, "target_loop": sorted({int(t) + 1 for t in k}), "counts": hist,
            "early": rate(((first >= 0) & (first < k)).sum(), n), "at_target": rate((first == k).sum(), n),
            "late": rate((first > k).sum(), n), "never": rate((first < 0).sum(), n),
        }
    return out


def answer_rates(correct: np.ndarray, hops: np.ndarray) -> dict:
    """{"overall": rate, "by_hops": {hops: rate}} of per-example answer correctness."""
    correct = np.asarray(correct, dtype=bool)
    return {"overall": rate(correct.sum(), len(correct)),
            "by_hops": {str(int(h)): rate(correct[hops == h].sum(), int((hops == h).sum())) for h in np.unique(hops)}}


def steps_to_accuracy(metrics_path: Path, threshold: float = TARGET_ACC) -> dict:
    """The first validation record of metrics.jsonl with val_trace_acc >= threshold: its step and train seconds
    (None for both when never reached)."""
    if Path(metrics_path).is_file():
        for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("val_trace_acc", -1.0) >= threshold:
                return {"threshold": threshold, "step": rec["step"], "train_seconds": rec.get("train_seconds")}
    return {"threshold": threshold, "step": None, "train_seconds": None}


# ----------------------------------------------------------------------------------------------- model passes

@torch.no_grad()
def forced_tokens(model: RLFModel, split: Split, factor: int = FORCED_FACTOR, batch_size: int = 64,
                  progress: bool = False) -> np.ndarray:
    """Top-1 ids (N, W) of the loop run `factor` x (target halt loop) times per batch without stopping at <HALT>
    (`solve` freezes a finished example; this does not), padded with -1."""
    model.eval()
    n = len(split.examples)
    order = sorted(range(n), key=lambda i: len(split.target_ids[i]))
    device = model.lm_head.device
    rows: list = [None] * n
    bar = tqdm(total=n, desc="forced loops", unit="ex", disable=not progress, dynamic_ncols=True, leave=False)
    start = 0
    while start < n:
        idx = order[start : start + batch_size]
        n_loops = factor * (len(split.target_ids[idx[-1]]) + 1)
        idx = idx[: max(1, LOGIT_BUDGET // (4 * n_loops * (model.halt_id + 1)))]  # keep the logits bounded
        x, lengths, _ = split.batch(idx)
        tokens = model(x.to(device), lengths, n_loops).argmax(-1).cpu().numpy()  # (B, n_loops)
        for row, i in enumerate(idx):
            rows[i] = tokens[row]
        start += len(idx)
        bar.update(len(idx))
    bar.close()
    out = np.full((n, max(len(r) for r in rows)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@torch.no_grad()
def loop_one_answers(model: RLFModel, split: Split, batch_size: int = 64) -> np.ndarray:
    """Top-1 ids (N,) after one pass of the loop (the no-loop baseline's answer)."""
    model.eval()
    out = []
    for i in range(0, len(split.examples), batch_size):
        x, lengths, _ = split.batch(list(range(i, min(i + batch_size, len(split.examples)))))
        out.append(model(x.to(model.lm_head.device), lengths, 1)[:, 0].argmax(-1).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def base_answers(base: Base, examples: list[Example], template: str, batch_size: int = 32,
                 progress: bool = False, max_new_tokens: int = GEN_TOKENS, chat: bool = False) -> np.ndarray:
    """The frozen base's answer (N,) by greedy generation after each templated prompt (with `chat`: after the prompt
    as a user turn of the tokenizer's chat template, the format an instruct base is tuned on): the first word of the
    `max_new_tokens` generated tokens (special tokens such as the end of turn dropped), as the id of the token
    " word" (-1 when that is not one token, or when nothing but whitespace/punctuation was generated). Scoring only
    the first generated token would measure formatting: SmolLM2 often starts its answer with " " or "\n", or ends
    its turn. Generation is transformers' `generate` (greedy, with its KV cache) on batches of prompts of one token
    length, so no padding enters any architecture (an SSM base has no attention mask)."""
    if chat:
        texts = [base.tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}],
                                                    add_generation_prompt=True, tokenize=False) for ex in examples]
        ids = [base.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        ids = base.tokenize([apply_template(template, ex.prompt) for ex in examples])
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_length.setdefault(len(x), []).append(i)
    batches = [group[i : i + batch_size] for _, group in sorted(by_length.items())
               for i in range(0, len(group), batch_size)]
    preds = np.full(len(examples), -1, dtype=np.int64)
    pad = base.tokenizer.pad_token_id
    for idx in tqdm(batches, desc="base alone", unit="batch", disable=not progress, dynamic_ncols=True, leave=False):
        prompt = torch.tensor([ids[i] for i in idx], device=base.device)  # (B, T): one length, no padding
        out = base.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad)  # stops at the end of turn; pads after it
        for i, g in zip(idx, out[:, prompt.shape[1]:].tolist()):
            words = base.tokenizer.decode(g, skip_special_tokens=True).split()
            word = words[0].strip(".,;:!?\"'()") if words else ""
            token = base.tokenizer(" " + word, add_special_tokens=False)["input_ids"] if word else []
            if len(token) == 1:
                preds[i] = token[0]
    return preds


def mean_prompt_tokens(base: Base, examples: list[Example], template: str) -> float:
    """Mean length in tokens of the templated prompts."""
    ids = base.tokenize([apply_template(template, ex.prompt) for ex in examples])
    return float(np.mean([len(x) for x in ids]))


# ----------------------------------------------------------------------------------------------- the plan

@dataclass
class Job:
    """One trained model of the headline: its run directory, config, and role."""

    name: str
    cfg: TrainConfig
    role: str  # "main", "no_loop" or "ablation"
    protocol: str
    core: str
    variant: str = ""
    measures: dict = field(default_factory=dict)


def parse_ablations(text: str | None) -> list[str]:
    """`on`/`all` -> every default variant, `off`/`none`/'' -> none, else a comma list of variants, each one or
    more space-separated key=value config overrides (`loop_pos=learned max_loops=4`)."""
    text = (text or "").strip()
    if text in ("on", "all"):
        return list(ABLATIONS)
    if text in ("", "off", "none"):
        return []
    items = [" ".join(t.split()) for t in text.split(",") if t.strip()]
    for item in items:
        for override in item.split():
            key = override.split("=", 1)[0].strip().replace("-", "_")
            if "=" not in override or key in TOOL_KEYS:
                raise RLFError(f"--ablations {item!r}: each variant is config overrides key=value (not "
                               f"{', '.join(TOOL_KEYS)}), e.g. {','.join(ABLATIONS)}; or on / off")
        load_config(None, item.split())  # checks the keys and the values
    return items


def _slug(override: str) -> str:
    return override.replace("=", "-").replace("/", "_").replace(" ", "+")


def plan_jobs(preset: str, overrides: list[str], protocols: list[str], cores: list[str], ablations: list[str],
              distractors: int) -> list[Job]:
    """The runs to train: per protocol and core the main model and the no-loop baseline, then the ablation
    variants of the first core and protocol (a variant equal to the main config is the main run)."""
    for item in overrides:
        if item.split("=", 1)[0].strip().replace("-", "_") in TOOL_KEYS:
            raise RLFError(f"override {item!r}: {', '.join(TOOL_KEYS)} are set by --cores, --protocols and "
                           "--distractors")
    bad = [p for p in protocols if p not in PROTOCOLS] or [c for c in cores if c not in CORES]
    if bad or not protocols or not cores:
        raise RLFError(f"--protocols/--cores {','.join(bad) or '(empty)'}: protocols are {', '.join(PROTOCOLS)}; "
                       f"cores are {', '.join(CORES)}")

    def config(protocol: str, core: str, extra: list[str]) -> TrainConfig:
        return load_config(preset, [*overrides, *protocol_overrides(protocol, distractors), f"core={core}", *extra])

    jobs = []
    for p in protocols:
        for c in cores:
            jobs += [Job(f"{c}-{p}", config(p, c, []), "main", p, c),
                     Job(f"{c}-{p}-noloop", config(p, c, [NO_LOOP]), "no_loop", p, c, NO_LOOP)]
    main = jobs[0]
    for variant in ablations:
        cfg = config(main.protocol, main.core, variant.split())
        name = main.name if cfg.to_dict() == main.cfg.to_dict() else f"{main.name}-{_slug(variant)}"
        jobs.append(Job(name, cfg, "ablation", main.protocol, main.core, variant))
    return jobs


# ----------------------------------------------------------------------------------------------- caching

def _stamp(run_dir: Path, cfg: TrainConfig) -> dict:
    """What a run's measurements depend on: its config and its weights."""
    return {"config": cfg.digest(), "weights": file_digest(run_dir / "model.safetensors")}


def cached(path: Path, key: dict, compute) -> dict:
    """`compute()` once: its result is kept in `path` with `key` and reused while the key is the same."""
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                log.info("reusing %s", path)
                return stored["value"]
        except ValueError:
            pass
    value = compute()
    _write_atomic(path, json.dumps({"key": key, "value": value}))
    return value


def _sets_digest(sets: dict[str, list[Example]]) -> str:
    h = hashlib.sha256()
    for name, examples in sets.items():
        h.update(name.encode() + b"\0" + "\n".join(ex.prompt for ex in examples).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- measuring runs

def _training(run_dir: Path, summary: dict, run: LoadedRun) -> dict:
    """Training figures of a run: summary.json, steps to 99%, and tokens/s."""
    tokens = mean_prompt_tokens(run.base, read_jsonl(run_dir / "train.jsonl"), run.config.template)
    return {**{k: summary[k] for k in ("steps", "stopped", "train_seconds", "encode_seconds", "examples_per_s",
                                       "val_trace_acc")},
            "encode_cost_seconds": summary.get("encode_cost_seconds"),  # None: summary or cache older than it
            "mean_prompt_tokens": round(tokens, 2), "tokens_per_s": round(summary["examples_per_s"] * tokens, 1),
            "to_target": steps_to_accuracy(run_dir / "metrics.jsonl")}


def measure_main(run: LoadedRun, run_dir: Path, hops: list[int], n: int, progress: bool, part) -> dict:
    """Evaluation (with the lifeline severed in distribution), forced-loop stability and the first-halt histogram.

    `part(name, compute)` returns a piece, computing it only if it is not kept: the whole takes hours on CPU for a
    Transformer with 32-hop chains, and an interrupted measurement resumes after the last piece done.
    """
    result = part("evaluate", lambda: evaluate(run_dir, hops=hops, n=n, ablations="zero", run=run,
                                               ablate_splits=["in-distribution"], write=False, progress=progress))
    sets = eval_sets(run, run_dir, hops=hops, n=n)

    def stability_of(name: str, examples: list[Example]) -> dict:
        split = prepare_split(examples, run.base, run.config, name, progress)
        s = stability_outcomes(forced_tokens(run.model, split, progress=progress), split.target_ids,
                               run.model.halt_id)
        ex_hops = np.array([ex.hops for ex in examples])
        return {"stability": {"overall": summarize_stability(s), "by_hops": {
                    str(int(h)): summarize_stability(s, ex_hops == h) for h in np.unique(ex_hops)}},
                "halt_histogram": halt_histogram(s["first_halt"], s["k"], ex_hops)}

    stability, histogram = {}, {}
    for name, examples in sets.items():
        piece = part(f"stability-{name}", lambda: stability_of(name, examples))
        stability[name] = piece["stability"]
        histogram.update(piece["halt_histogram"])
    return {"eval": result, "stability": stability, "halt_histogram": histogram, "eval_sets": _sets_digest(sets)}


def measure_clock(run: LoadedRun, run_dir: Path, hops: list[int], n: int, progress: bool,
                  split: str = "in-distribution", ablation: dict | None = None) -> dict | None:
    """Trace accuracy (overall and per hop) and the fraction of chains halting early, on a held-out split with the loop
    clock changed at inference: by default moved CLOCK_OFFSET loops ahead in distribution (a model that halts by
    counting loops halts early), or any `loop_offset`/`loop_clamp` ablation (held at CLOCK_HOLD on the OOD split: the
    measured way past the trained lengths). None for a model without a loop position (loop_pos=none): it has no clock.
    """
    if run.config.loop_pos == "none":
        return None
    ablation = ablation or {"loop_offset": CLOCK_OFFSET}
    examples = eval_sets(run, run_dir, hops=hops, n=n)[split]
    prepared = prepare_split(examples, run.base, run.config, split, progress)
    tokens, p_halt = run_solve(run.model, prepared, ablation=ablation, progress=progress, desc=f"loop clock, {split}")
    s = score(tokens, p_halt, prepared.target_ids, run.model.halt_id)
    k = np.array([len(t) for t in prepared.target_ids])
    early = (s["halt_loop"] >= 0) & (s["halt_loop"] < k)
    trace = answer_rates(s["trace_ok"], np.array([ex.hops for ex in examples]))
    return {"offset": ablation.get("loop_offset"), "clamp": ablation.get("loop_clamp"),
            "early_halt": rate(early.sum(), len(k)), "trace_acc": trace["overall"], "by_hops": trace["by_hops"]}


def measure_answers(preds_of, sets: dict[str, list[Example]], target_ids: dict[str, list[list[int]]]) -> dict:
    """Answer accuracy per set (overall and per hop) of `preds_of(name) -> (N,) token ids`."""
    out = {}
    for name, examples in sets.items():
        answers = np.array([t[-1] for t in target_ids[name]])
        out[name] = answer_rates(preds_of(name) == answers, np.array([ex.hops for ex in examples]))
    return out


def measure_no_loop(run: LoadedRun, run_dir: Path, hops: list[int], n: int, progress: bool) -> dict:
    """Answer accuracy at loop 1 of a no-loop run (supervision=answer_once) on its held-out sets."""
    sets = eval_sets(run, run_dir, hops=hops, n=n)
    splits = {name: prepare_split(ex, run.base, run.config, name, progress) for name, ex in sets.items()}
    answers = measure_answers(lambda name: loop_one_answers(run.model, splits[name]), sets,
                              {name: sp.target_ids for name, sp in splits.items()})
    return {"answers": answers, "eval_sets": _sets_digest(sets)}


def measure_base_alone(base: Base, cfg: TrainConfig, sets: dict[str, list[Example]], progress: bool) -> dict:
    """Answer accuracy of the frozen base's greedy generation (its first word) on the same held-out sets: after the
    run's template (`answers`) and, when the tokenizer has a chat template, as a chat user turn (`chat_answers`)."""
    tids = {name: target_ids_of(ex, base.tokenizer, name) for name, ex in sets.items()}

    def answers(chat: bool) -> dict:
        return measure_answers(lambda name: base_answers(base, sets[name], cfg.template, progress=progress, chat=chat),
                               sets, tids)

    out = {"answers": answers(False), "eval_sets": _sets_digest(sets), "base": cfg.base,
           "generated_tokens": GEN_TOKENS, "layers": f"{base.encoder_layers} of {base.total_layers}"}
    if base.tokenizer.chat_template:
        out["chat_answers"] = answers(True)
    return out


def trace_rates(splits: dict) -> dict:
    """{split: {"overall": trace_acc, "by_hops": {hops: trace_acc}}} of the intact model in an `evaluate` result."""
    return {name: {"overall": sp["conditions"]["intact"]["overall"]["trace_acc"],
                   "by_hops": {h: m["trace_acc"] for h, m in sp["conditions"]["intact"]["by_hops"].items()}}
            for name, sp in splits.items()}


def measure_ablation(run: LoadedRun, run_dir: Path, hops: list[int], n: int, progress: bool) -> dict:
    """In-distribution and OOD trace accuracy of an ablation variant."""
    return trace_rates(evaluate(run_dir, hops=hops, n=n, ablations="none", run=run, write=False,
                                progress=progress)["splits"])


def measure_job(job: Job, run_dir: Path, run: LoadedRun, summary: dict, ood: list[int], n: int, settings: dict,
                progress: bool) -> dict:
    """A job's measurements by role, each cached in its run directory (keyed by the weights and the settings)."""
    hops = train_hops(run_dir, job.cfg)
    if any(h in hops for h in ood):
        raise RLFError(f"--ood-hops {','.join(map(str, ood))}: {run_dir} was trained on hops "
                       f"{','.join(map(str, hops))}; OOD hops must lie outside them")
    key = {**_stamp(run_dir, job.cfg), "hops": hops + ood, "n": n}
    if job.role == "ablation":
        return cached(run_dir / f"headline_ablation_{_slug(job.variant)}.json", key,
                      lambda: measure_ablation(run, run_dir, hops + ood, n, progress))

    def part(name, compute):  # a piece of the main measurement, kept beside the whole under the same key
        return cached(run_dir / f"headline_eval.{name}.json", key, compute)

    args = (run, run_dir, hops + ood, n, progress)
    out = cached(run_dir / "headline_eval.json", key,
                 lambda: measure_main(*args, part) if job.role == "main" else measure_no_loop(*args))
    out["training"] = _training(run_dir, summary, run)
    if job.role == "main":
        out["clock"] = cached(run_dir / "headline_clock.json", {**key, "hops": hops, "offset": CLOCK_OFFSET},
                              lambda: measure_clock(run, run_dir, hops, n, progress))
        out["clock_held"] = cached(run_dir / "headline_clock_held.json", {**key, "hops": ood, "clamp": CLOCK_HOLD},
                                   lambda: measure_clock(run, run_dir, ood, n, progress, "ood",
                                                         {"loop_clamp": CLOCK_HOLD}))
        loops, batch, fresh = settings["memory_loops"], settings["memory_batch"], settings["fresh_memory"]
        out["memory"] = cached(run_dir / "headline_memory.json", {**_stamp(run_dir, job.cfg), "loops": loops,
                                                                  "batch": batch, "fresh_process": fresh},
                               lambda: {**(memory_in_fresh_process(run_dir, loops, batch, job.cfg.device) if fresh
                                           else bench_memory(run, run_dir, loops, batch)), "fresh_process": fresh})
    return out


# ----------------------------------------------------------------------------------------------- the tool

def machine_info(device: torch.device | str) -> dict:
    """Where the numbers were measured: platform, CPU, threads, accelerator; and the versions that matter."""
    import sys

    import transformers

    import rlf

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "transformers": transformers.__version__, "rlf": rlf.__version__}
    return {"machine": info, "versions": versions}


def headline_command(settings: dict) -> str:
    """The `rlf bench headline` command line that reproduces these settings."""
    args = ["rlf", "bench", "headline", "--out", settings["out"], "--protocols", ",".join(settings["protocols"]),
            "--cores", ",".join(settings["cores"]), "--ablations", ",".join(settings["ablations"]) or "off",
            "--n-ood", str(settings["n"]), "--ood-hops", ",".join(map(str, settings["ood_hops"])),
            "--preset", settings["preset"], "--distractors", str(settings["distractors"]), "--docs", settings["docs"]]
    return shlex.join(args + (["--quick"] if settings["quick"] else []) + settings["overrides"])


def run_headline(out: str | Path | None = None, *, protocols=("forward", "backward"), cores=("mamba2", "transformer"),
                 ablations: str | list[str] | None = "on", n: int | None = None,
                 ood_hops: str | list[int] | None = None, preset: str | None = None, overrides=(),
                 distractors: int = 2, docs: str | Path | None = None, quick: bool = False,
                 progress: bool = True) -> dict:
    """Train (or reuse) every model, measure them, write `out/headline.json`, the Markdown table and the plot.

    Returns the results dict (also in headline.json), with "docs" = the Markdown path.
    """
    sizes = SIZES["quick" if quick else "full"]
    out = Path(out or sizes["out"])
    docs = Path(docs or sizes["docs"] or out / "RESULTS.md")
    preset = preset or sizes["preset"]
    n = sizes["n"] if n is None else n
    if n <= 0:
        raise RLFError(f"--n-ood {n}: must be a positive number of chains per hop count")
    if distractors < 0:
        raise RLFError(f"--distractors {distractors}: must be 0 or more")
    ood = parse_hops(ood_hops or sizes["ood_hops"]) if not isinstance(ood_hops, list) else sorted(ood_hops)
    variants = parse_ablations(ablations) if not isinstance(ablations, list) else ablations
    jobs = plan_jobs(preset, [*sizes["train"], *overrides], list(protocols), list(cores), variants, distractors)
    settings = {"out": str(out), "docs": str(docs), "protocols": list(protocols), "cores": list(cores),
                "ablations": variants, "n": n, "ood_hops": ood, "preset": preset, "distractors": distractors,
                "quick": quick, "overrides": list(overrides), "quick_overrides": sizes["train"],
                "memory_loops": list(sizes["memory_loops"]), "memory_batch": sizes["memory_batch"],
                "fresh_memory": sizes["fresh_memory"]}
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(j.name for j in jobs))
    log.info("headline: %d runs in %s: %s", len(names), out, ", ".join(names))

    bases: dict = {}

    def base_for(cfg: TrainConfig, layers: int | None) -> Base:
        key = (cfg.base, layers, cfg.device)
        if key not in bases:
            bases[key] = load_base(cfg.base, layers, device=cfg.device)
        return bases[key]

    summaries: dict[str, dict] = {}
    for i, job in enumerate(jobs, 1):
        log.info("headline [%d/%d] %s (%s): train or reuse", i, len(jobs), job.name, job.role)
        base = base_for(job.cfg, job.cfg.encoder_layers)
        if job.name not in summaries:
            summaries[job.name] = train_or_reuse(job.cfg, out / job.name, base)
        log.info("headline [%d/%d] %s: measure", i, len(jobs), job.name)
        job.measures = measure_job(job, out / job.name, load_run(out / job.name, base=base), summaries[job.name],
                                   ood, n, settings, progress)

    results = {"command": headline_command(settings), "date": None,  # set when every measurement is done
               **machine_info(next(iter(bases.values())).device), "settings": settings, "protocols": {},
               "ablations": None, "definitions": DEFINITIONS, "seeds": SEEDS}
    for p in protocols:
        first = next(j for j in jobs if j.protocol == p and j.role == "main")
        run = load_run(out / first.name, base=base_for(first.cfg, first.cfg.encoder_layers))
        hops = train_hops(out / first.name, first.cfg)
        sets = eval_sets(run, out / first.name, hops=hops + ood, n=n)
        full = base_for(first.cfg, None)  # every layer: the base model's own next-token prediction
        key = {"base": first.cfg.base, "fingerprint": full.fingerprint, "template": first.cfg.template,
               "eval_sets": _sets_digest(sets), "generated_tokens": GEN_TOKENS,
               "chat": bool(full.tokenizer.chat_template)}
        log.info("headline: %s protocol: the base alone (%d layers) on the same prompts", p, full.encoder_layers)
        base_alone = cached(out / f"base-alone-{p}.json", key,
                            lambda: measure_base_alone(full, first.cfg, sets, progress))
        mine = [j for j in jobs if j.protocol == p and j.role in ("main", "no_loop")]
        results["protocols"][p] = {
            "overrides": protocol_overrides(p, distractors),
            "train_hops": hops, "ood_hops": ood, "n_per_hop": n,
            "same_eval_sets": {j.measures["eval_sets"] for j in mine} == {base_alone["eval_sets"]},
            "cores": {j.core: {"run": str(out / j.name), **j.measures} for j in mine if j.role == "main"},
            "baselines": {"base_alone": base_alone,
                          "no_loop": {j.core: {"run": str(out / j.name), **j.measures}
                                      for j in mine if j.role == "no_loop"}},
        }
    abl = [j for j in jobs if j.role == "ablation"]
    if abl:
        main, c = jobs[0], jobs[0].cfg
        splits = results["protocols"][main.protocol]["cores"][main.core]["eval"]["splits"]
        rows = {f"main run (lifeline={c.lifeline}, loop_pos={c.loop_pos}, supervision={c.supervision})":
                {"run": str(out / main.name), **trace_rates(splits)}}
        rows.update({j.variant: {"run": str(out / j.name), **j.measures} for j in abl})
        results["ablations"] = {"protocol": main.protocol, "core": main.core, "rows": rows}

    results["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    _write_atomic(out / "headline.json", json.dumps(results, indent=2))
    docs.parent.mkdir(parents=True, exist_ok=True)
    plot = docs.with_name(docs.stem.replace("RESULTS", "results") + "_per_hop.png")
    plot_per_hop(results, plot)
    docs.write_text(render_results(results, plot.name))
    log.info("headline: %s, %s and %s written", out / "headline.json", docs, plot)
    return {**results, "docs": str(docs), "plot": str(plot)}


# ----------------------------------------------------------------------------------------------- report

def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s ({s / 60:.1f} min)" if s >= 60 else f"{s:.1f} s"


def steps_cell(m: dict) -> str:
    """Steps and training time to the target val accuracy, and that time plus encoding the run's data from scratch."""
    t, enc = m["training"]["to_target"], m["training"].get("encode_cost_seconds")
    if t["step"] is None:
        return "not reached"
    with_encoding = "" if enc is None else f"; {_seconds(t['train_seconds'] + enc)} with encoding from scratch"
    return f"{t['step']} ({_seconds(t['train_seconds'])}{with_encoding})"


def headline_table(proto: dict, protocol: str) -> str:
    """The side-by-side table of one protocol: one column per core, and the seeds' numbers where SPEC gives them."""
    cores = proto["cores"]
    seeds = protocol == "forward"
    hops = proto["train_hops"]

    def row(label: str, fn, seed: str = "—") -> list[str]:
        return [label] + [fn(m) for m in cores.values()] + [seed if seeds else "—"]

    def ood(h: int):
        return lambda m: fmt_rate(m["eval"]["splits"]["ood"]["conditions"]["intact"]["by_hops"][str(h)]["trace_acc"])

    def ind(metric: str, cond: str = "intact"):
        return lambda m: fmt_rate(m["eval"]["splits"]["in-distribution"]["conditions"][cond]["overall"][metric])

    def unseen(m):
        by_answer = m["eval"]["splits"]["in-distribution"]["conditions"]["intact"].get("by_answer")
        return fmt_rate(by_answer["unseen"]["trace_acc"]) if by_answer else "n/a (measured before this row existed)"

    def held(h: int):
        return lambda m: ("no loop position" if m["clock_held"] is None
                          else fmt_rate(m["clock_held"]["by_hops"][str(h)]))

    def clock(m):
        return "no loop position" if m["clock"] is None else fmt_rate(m["clock"]["early_halt"])

    def mem_peak(m):
        mem = m["memory"]
        where = "fresh process" if mem["fresh_process"] else "in process"
        return (f"{max(mem['peak_mb']):.1f} MB (batch {mem['batch_size']}, up to {mem['loops'][-1]} loops, "
                f"{mem['method']}, {where})")

    rows = [row(f"in-distribution trace accuracy (hops {hops[0]}-{hops[-1]})", ind("trace_acc")),
            row("halt precision (in distribution)", ind("halt_precision")),
            row("in-distribution trace accuracy, answer word never a training answer", unseen)]
    rows += [row(f"OOD trace accuracy, {h} hops", ood(h)) for h in proto["ood_hops"]]
    rows += [row(f"OOD trace accuracy, {h} hops, loop clock held at loop {CLOCK_HOLD + 1} (inference)", held(h))
             for h in proto["ood_hops"]]
    rows += [
        row("lifeline at 0: loop agreement", ind("loop_agreement", "zero"), SEEDS["zero_agreement"]),
        row("lifeline at 0: trace accuracy", ind("trace_acc", "zero")),
        row(f"loop clock moved {CLOCK_OFFSET} loops ahead: in-distribution chains halting early", clock),
        row("peak inference memory", mem_peak),
        row("memory growth per loop", lambda m: f"{m['memory']['growth_mb_per_loop']:+.4f} MB/loop "
                                                f"({'flat' if m['memory']['flat'] else 'GROWS'})",
            SEEDS["memory_growth"]),
        row(f"steps to {100 * TARGET_ACC:.0f}% val trace acc", steps_cell, SEEDS["steps_to_target"]),
        row("training wall time", lambda m: f"{_seconds(m['training']['train_seconds'])}, "
                                            f"{m['training']['steps']} steps ({m['training']['stopped']})"),
        row("examples/s (training)", lambda m: f"{m['training']['examples_per_s']:.1f}", SEEDS["examples_per_s"]),
        row("tokens/s (training)", lambda m: f"{m['training']['tokens_per_s']:.0f} "
                                             f"({m['training']['mean_prompt_tokens']:.1f} tokens/prompt)"),
    ]
    return md_table(["metric", *cores, "seeds / reference (SPEC)"], rows)


def baseline_table(proto: dict) -> str:
    """Answer accuracy in distribution and per OOD hop: the loop models, the base alone, the no-loop models."""
    def cells(answers: dict) -> list[str]:
        return [fmt_rate(answers["in-distribution"]["overall"])] + [
            fmt_rate(answers["ood"]["by_hops"][str(h)]) for h in proto["ood_hops"]]

    rows = []
    for core, m in proto["cores"].items():
        intact = {name: sp["conditions"]["intact"] for name, sp in m["eval"]["splits"].items()}
        rows.append([f"RLF, {core} core (loop)"] + cells({
            "in-distribution": {"overall": intact["in-distribution"]["overall"]["answer_acc"]},
            "ood": {"by_hops": {h: v["answer_acc"] for h, v in intact["ood"]["by_hops"].items()}}}))
    b = proto["baselines"]["base_alone"]
    what = f"{b['base']}, {b['layers']} layers, first word of {b['generated_tokens']} greedy tokens"
    rows.append([f"base alone ({what}, the run's template)"] + cells(b["answers"]))
    if "chat_answers" in b:
        rows.append([f"base alone ({what}, the prompt as a chat user turn)"] + cells(b["chat_answers"]))
    for core, m in proto["baselines"]["no_loop"].items():
        rows.append([f"no loop, {core} core once (answer-only target)"] + cells(m["answers"]))
    return md_table(["model (answer accuracy)", "in distribution", *(f"{h} hops" for h in proto["ood_hops"])], rows)


def stability_table(proto: dict) -> str:
    rows = []
    for split in ("in-distribution", "ood"):
        for metric, label in (("forced_trace_acc", "forced trace accuracy"), ("halt_absorbing", "halt absorbing"),
                              ("answer_unchanged", "answer unchanged")):
            rows.append([f"{split}: {label}"] + [fmt_rate(m["stability"][split]["overall"][metric])
                                                 for m in proto["cores"].values()])
    return md_table([f"loop forced to {FORCED_FACTOR} x the needed loops", *proto["cores"]], rows)


def histogram_table(hist: dict) -> str:
    rows = [[h, ",".join(map(str, v["target_loop"])), fmt_rate(v["early"], short=True),
             fmt_rate(v["at_target"], short=True), fmt_rate(v["late"], short=True), fmt_rate(v["never"], short=True),
             " ".join(f"{loop}:{c}" for loop, c in v["counts"].items())]
            for h, v in sorted(hist.items(), key=lambda kv: int(kv[0]))]
    return md_table(["hops", "target loop", "early", "at target", "late", "never", "first <HALT> loop: count"], rows)


def ablation_table(abl: dict, ood_hops: list[int]) -> str:
    rows = []
    for variant, m in abl["rows"].items():
        rows.append([variant, fmt_rate(m["in-distribution"]["overall"]), fmt_rate(m["ood"]["overall"])]
                    + [fmt_rate(m["ood"]["by_hops"][str(h)], short=True) for h in ood_hops])
    return md_table(["variant", "in-distribution trace acc", "OOD trace acc (all)",
                     *(f"{h} hops" for h in ood_hops)], rows)


def render_results(results: dict, plot_name: str) -> str:
    """RESULTS.md from the results dict."""
    s, mach, ver = results["settings"], results["machine"], results["versions"]
    parts = [
        "# RLF headline results\n",
        "Generated by `rlf bench headline`; do not edit by hand — rerun the command to regenerate.\n",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}",
        f"- machine: {mach['platform']}, {mach['processor']}, {mach['cpu_count']} CPUs, {mach['torch_threads']} torch "
        f"threads, device {mach['device']}" + (f" ({mach['gpu']})" if mach.get("gpu") else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        f"- preset `{s['preset']}`, overrides for every run: "
        f"`{' '.join(s['quick_overrides'] + s['overrides']) or '-'}`; {s['n']} held-out chains per hop count; "
        "rates are `rate [95% Wilson interval] (count/n)`.\n",
    ]
    if s["quick"]:
        parts.append("**--quick: a tiny random base and a few training steps; these numbers only check the tool.**\n")
    for p, proto in results["protocols"].items():
        what = ("the seeds' protocol: statements in chain order" if p == "forward"
                else "genuine pointer chasing: statements shuffled, targets from the query, distractor chains")
        parts += [
            f"## Protocol `{p}` ({what}; `{' '.join(proto['overrides'])}`)\n",
            f"Trained on hops {','.join(map(str, proto['train_hops']))}"
            + ("; the cores on identical data and hyperparameters" if len(proto["cores"]) > 1 else "")
            + f"; held-out sets identical across the models of this protocol: "
            f"{'yes' if proto['same_eval_sets'] else 'NO'}.\n",
            headline_table(proto, p),
            "### Baselines: answer accuracy on the same prompts\n", baseline_table(proto),
            "### Stability\n", stability_table(proto),
        ]
        for core, m in proto["cores"].items():
            parts += [f"#### First <HALT> loop per hop count, {core}\n", histogram_table(m["halt_histogram"])]
    if results["ablations"]:
        a = results["ablations"]
        parts += [f"## Component ablations ({a['core']} core, `{a['protocol']}` protocol; trace accuracy)\n",
                  ablation_table(a, results["settings"]["ood_hops"])]
    parts += [f"## Accuracy per hop count\n\n![per-hop accuracy]({plot_name})\n",
              "## Definitions\n", "".join(f"- **{k}**: {v}\n" for k, v in results["definitions"].items())]
    return "\n".join(parts)


def plot_per_hop(results: dict, path: Path) -> None:
    """One panel per protocol: trace accuracy per hop of each core, answer accuracy of the baselines, 95% CIs."""
    from matplotlib.figure import Figure

    protos = results["protocols"]
    fig = Figure(figsize=(6.5 * len(protos), 4.5))
    for ax, (p, proto) in zip(fig.subplots(1, len(protos), squeeze=False)[0], protos.items()):
        hops = proto["train_hops"] + proto["ood_hops"]
        xs = np.arange(len(hops))
        held = {core: m["clock_held"]["by_hops"] for core, m in proto["cores"].items() if m["clock_held"]}
        n_lines = 2 * len(proto["cores"]) + len(held) + 1 + ("chat_answers" in proto["baselines"]["base_alone"])
        offsets = iter(np.linspace(-0.15, 0.15, n_lines))  # side by side, so equal rates do not hide each other

        def line(rates: dict, label: str, style: str) -> None:  # at the hop counts `rates` has
            at = [i for i, h in enumerate(hops) if str(h) in rates]
            r = [rates[str(hops[i])] for i in at]
            y = np.array([100 * (v["rate"] or 0.0) for v in r])
            err = np.array([[y[i] - 100 * v["ci95"][0], 100 * v["ci95"][1] - y[i]] for i, v in enumerate(r)]).T
            err = err.clip(min=0)  # rounding can put an end of the interval a hair past the rate
            ax.errorbar(xs[at] + next(offsets), y, yerr=err, fmt=style, capsize=3, label=label)

        for core, m in proto["cores"].items():
            sp = m["eval"]["splits"]
            line({h: v["trace_acc"] for s in ("in-distribution", "ood")
                  for h, v in sp[s]["conditions"]["intact"]["by_hops"].items()}, f"{core} (trace)", "o-")
        for core, rates in held.items():
            line(rates, f"{core}, clock held at loop {CLOCK_HOLD + 1} (trace)", "D-.")
        for core, m in proto["baselines"]["no_loop"].items():
            line({**m["answers"]["in-distribution"]["by_hops"], **m["answers"]["ood"]["by_hops"]},
                 f"no loop, {core} (answer)", "s--")
        b = proto["baselines"]["base_alone"]
        for key, label in (("answers", "base alone (answer)"), ("chat_answers", "base alone, chat (answer)")):
            if key in b:
                line({**b[key]["in-distribution"]["by_hops"], **b[key]["ood"]["by_hops"]}, label, "^:")
        ax.axvline(len(proto["train_hops"]) - 0.5, color="grey", lw=0.8)
        ax.set_xticks(xs, [str(h) for h in hops])
        ax.set_xlabel("hops (left of the line: trained)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"protocol {p}")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
