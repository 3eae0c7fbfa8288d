"""The measurements of `rlf bench headline`, one function per kind of part, each on one held-out set of one hop count
(or, for memory and training, on the run): a model's main measurement (evaluation with the lifeline severed in
distribution, forced-loop stability, the first-halt histogram), its loop-clock probe, the no-loop baseline, an
ablation variant, the base alone, inference memory and the training figures.

`settings(kind, ...)` is what a part of that kind is measured with, and `VERSIONS[kind]` the version of its code: both
are in the part's key, so changing either shows every committed part of that kind as stale until it is measured again.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlf.base import Base
from rlf.bench_memory import bench_memory, memory_in_fresh_process
from rlf.cache import tokenize_prompts
from rlf.config import TrainConfig
from rlf.evaluate import evaluate_split, rate, run_solve, score
from rlf.evaluate import parse_ablations as inference_ablations
from rlf.headline.plan import SIZES, HeldOut, Job
from rlf.model import RLFModel, loop_targets
from rlf.tasks import Example, read_jsonl
from rlf.train import LoadedRun, Split, prepare_split, target_ids_of

FORCED_FACTOR = 2  # the stability check runs the loop this many times the needed loops
CLOCK_OFFSET = 3  # the loop-clock probe: loop i sees loop position i + this
CLOCK_HOLD = 3  # the clock held at inference: every loop after the 4th sees the 4th loop's position (`--ablate
# clamp=3`). 3 was chosen on 7-, 9- and 12-hop dev chains of the presets (README, "The loop clock"), not on test hops
TARGET_ACC = 0.99  # "steps to 99%": the first validation at or above this trace accuracy
LOGIT_BUDGET = 256 * 2**20  # bytes of (B, L, V + 1) float32 logits one forced-loop batch may hold
GEN_TOKENS = 4  # greedy tokens the base alone may generate before its first word counts as its answer

# the version of each kind's measurement code, in its parts' keys: raise it when a change alters what that kind
# measures (its committed parts then show as stale until they are measured again)
VERSIONS = {"main": 1, "clock": 1, "no_loop": 1, "ablation": 1, "base_alone": 1, "memory": 1, "training": 1}


def settings(kind: str, in_distribution: bool, quick: bool) -> dict:
    """What a part of `kind` is measured with (on an in-distribution hop count or not; sizes of --quick or not)."""
    if kind == "main":  # the lifeline severed in distribution only
        return {"ablations": inference_ablations("zero" if in_distribution else ""), "forced_factor": FORCED_FACTOR}
    if kind == "clock":  # moved ahead in distribution (a model that counts loops halts early); held past it
        return {"loop_offset": CLOCK_OFFSET} if in_distribution else {"loop_clamp": CLOCK_HOLD}
    if kind == "base_alone":
        return {"generated_tokens": GEN_TOKENS}
    if kind == "memory":
        sizes = SIZES["quick" if quick else "full"]
        return {"loops": list(sizes["memory_loops"]), "batch_size": sizes["memory_batch"],
                "fresh_process": sizes["fresh_memory"]}
    if kind == "training":
        return {"target_acc": TARGET_ACC}
    return {}


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


def summarize_stability(s: dict[str, np.ndarray]) -> dict:
    """Rates of `stability_outcomes`."""
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
        tokens = model(x.to(device), lengths, n_loops, **split.model_inputs(idx)).argmax(-1).cpu().numpy()  # (B, L)
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
        idx = list(range(i, min(i + batch_size, len(split.examples))))
        x, lengths, _ = split.batch(idx)  # feedback=pointer and readout=copy also take the prompts' ids
        out.append(model(x.to(model.lm_head.device), lengths, 1, **split.model_inputs(idx))[:, 0].argmax(-1).cpu())
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
        ids = tokenize_prompts(base, template, [ex.prompt for ex in examples])
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
    ids = tokenize_prompts(base, template, [ex.prompt for ex in examples])
    return float(np.mean([len(x) for x in ids]))



# ----------------------------------------------------------------------------------------------- one part each

def measure_main(model: RLFModel, split: Split, settings: dict, trained_answers: set[str], name: str,
                 progress: bool) -> dict:
    """Evaluation (intact, and the `settings` ablations), forced-loop stability and the first-halt histogram."""
    conditions = evaluate_split(model, split, settings["ablations"], name=name, progress=progress,
                                trained_answers=trained_answers)
    s = stability_outcomes(forced_tokens(model, split, settings["forced_factor"], progress=progress),
                           split.target_ids, model.halt_id)
    hist = halt_histogram(s["first_halt"], s["k"], np.array([ex.hops for ex in split.examples]))
    return {"conditions": {c: {"overall": v["overall"], "by_answer": v["by_answer"]} for c, v in conditions.items()},
            "stability": summarize_stability(s), "halt_histogram": next(iter(hist.values()))}


def measure_clock(model: RLFModel, split: Split, settings: dict, name: str, progress: bool) -> dict:
    """Trace accuracy and the fraction of chains halting early with the loop clock changed at inference (`settings`:
    `loop_offset` or `loop_clamp`, as `rlf eval --ablate offset=K/clamp=C`)."""
    tokens, p_halt = run_solve(model, split, ablation=settings, progress=progress, desc=f"loop clock, {name}")
    s = score(tokens, p_halt, split.target_ids, model.halt_id)
    k = np.array([len(t) for t in split.target_ids])
    early = (s["halt_loop"] >= 0) & (s["halt_loop"] < k)
    return {"early_halt": rate(early.sum(), len(k)), "trace_acc": rate(s["trace_ok"].sum(), len(k))}


def _answer_rate(preds: np.ndarray, target_ids: list[list[int]]) -> dict:
    return rate((preds == np.array([t[-1] for t in target_ids])).sum(), len(target_ids))


def measure_ablation(model: RLFModel, split: Split, name: str, progress: bool) -> dict:
    """Trace and answer accuracy of an ablation variant."""
    intact = evaluate_split(model, split, name=name, progress=progress)["intact"]["overall"]
    return {"trace_acc": intact["trace_acc"], "answer_acc": intact["answer_acc"]}


def measure_base_alone(base: Base, cfg: TrainConfig, examples: list[Example], settings: dict, progress: bool) -> dict:
    """Answer accuracy of the frozen base's greedy generation (its first word): after the run's template (`answers`)
    and, when the tokenizer has a chat template, as a chat user turn (`chat_answers`)."""
    tids = target_ids_of(examples, base.tokenizer, "held-out set")

    def answers(chat: bool) -> dict:
        return _answer_rate(base_answers(base, examples, cfg.template, progress=progress,
                                         max_new_tokens=settings["generated_tokens"], chat=chat), tids)

    out = {"answers": answers(False), "base": cfg.base, "generated_tokens": settings["generated_tokens"],
           "layers": f"{base.encoder_layers} of {base.total_layers}"}
    if base.tokenizer.chat_template:
        out["chat_answers"] = answers(True)
    return out


def training_figures(run_dir: Path, summary: dict, run: LoadedRun, settings: dict) -> dict:
    """Training figures of a run: summary.json, steps to the target accuracy, and tokens/s."""
    tokens = mean_prompt_tokens(run.base, read_jsonl(run_dir / "train.jsonl"), run.config.template)
    return {**{k: summary[k] for k in ("steps", "stopped", "train_seconds", "encode_seconds", "examples_per_s",
                                       "val_trace_acc")},
            "encode_cost_seconds": summary.get("encode_cost_seconds"),  # None: summary or cache older than it
            "mean_prompt_tokens": round(tokens, 2), "tokens_per_s": round(summary["examples_per_s"] * tokens, 1),
            "to_target": steps_to_accuracy(run_dir / "metrics.jsonl", settings["target_acc"])}


def measure_memory(run: LoadedRun, run_dir: Path, settings: dict) -> dict:
    """Peak inference memory per loop count (`rlf bench memory`), in a fresh process or in this one."""
    loops, batch, fresh = settings["loops"], settings["batch_size"], settings["fresh_process"]
    result = (memory_in_fresh_process(run_dir, loops, batch, run.config.device) if fresh
              else bench_memory(run, run_dir, loops, batch))
    return {**result, "fresh_process": fresh}


@dataclass
class Subject:
    """What a job's parts are measured on: its trained run (directory, training summary) or, for the base alone,
    the base with every layer."""

    job: Job
    base: Base
    run: LoadedRun | None = None
    run_dir: Path | None = None
    summary: dict | None = None


def measure_part(kind: str, hops: int | None, settings: dict, subject: Subject, heldout: HeldOut,
                 progress: bool) -> dict:
    """The value of one part: `kind` measured on the held-out set of `hops` (None: on the run itself)."""
    job, run = subject.job, subject.run
    if kind == "memory":
        return measure_memory(run, subject.run_dir, settings)
    if kind == "training":
        return training_figures(subject.run_dir, subject.summary, run, settings)
    examples = heldout.examples(job.cfg, hops, job.n)
    if kind == "base_alone":
        return measure_base_alone(subject.base, job.cfg, examples, settings, progress)
    name = f"held-out set, {hops} hops"
    split = prepare_split(examples, run.base, run.config, name, progress)
    if kind == "main":
        return measure_main(run.model, split, settings, heldout.trained_answers(job.cfg), name, progress)
    if kind == "clock":
        return measure_clock(run.model, split, settings, name, progress)
    if kind == "no_loop":  # the core once: the answer is its top-1 token at loop 1
        return {"answers": _answer_rate(loop_one_answers(run.model, split), split.target_ids)}
    if kind == "ablation":
        return measure_ablation(run.model, split, name, progress)
    raise ValueError(f"unknown part kind {kind!r}")
