"""Evaluation: per-hop and overall metrics from `solve` traces, inference-time ablations, and `rlf eval`.

An example with k targets (k - 1 pointers, then the answer) has its target `<HALT>` at loop k + 1
(1-based; index k below). Its *halt* is the first loop whose top-1 token is `<HALT>` (none if no loop
emits it within `max_loops`). Metrics, per example, then counted:

- trace_acc: every one of the k + 1 target loops right, i.e. every target token and `<HALT>` at loop k + 1;
- answer_acc: the model halts, and the token it emitted at the loop just before its halt is the answer
  (an intermediate pointer may be wrong);
- halt_precision: of the examples that halt, the fraction whose halt is at the target halt loop;
- halt_recall: of all examples (each has exactly one target halt loop), the fraction that halt there;
- mean_halt_p: mean p(`<HALT>`) at the target halt loop (an example that halted earlier keeps its halting
  state, as `solve` does);
- per_loop_acc: at loop i, over the examples whose trace reaches loop i (i <= k + 1), the fraction whose
  top-1 token is the target (the pointer, the answer, or `<HALT>`);
- loop_agreement (ablations): over every (example, target loop) pair, the fraction whose ablated top-1 token
  equals the intact model's.

Every rate carries its count and a Wilson 95% interval. Ablations (`--ablate`): `zero` (lifeline gate x 0,
severed), `scale=S` (gate x S), `noise` (Gaussian noise of matched norm instead of the prompt), `shuffle`
(prompt positions permuted within each prompt); and two probes of the loop clock (the loop position encoding):
`offset=K` (loop i sees loop position i + K) and `clamp=C` (the loop position stops at C): a model that halts
by counting loops on that clock halts K loops early under offset=K, and one that counts by content does not.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlf import distributed
from rlf.errors import RLFError
from rlf.model import IGNORE, RLFModel, loop_targets, loops_needed
from rlf.tasks import Example, default_ood_hops, generate, parse_hops, read_jsonl, write_jsonl
from rlf.train import LoadedRun, Split, chain_options, load_run, prepare_split

log = logging.getLogger(__name__)

HELDOUT_SEED_OFFSET = 104_729  # eval sets: data_seed + this + hops (training uses data_seed, validation data_seed + 7919)
DEFAULT_ABLATIONS = "zero,noise,shuffle"  # also the `rlf eval --ablate` default (eval_cli.py)
Z95 = 1.959963984540054

DEFINITIONS = {
    "trace_acc": "every target token right and <HALT> at exactly the target loop (k + 1 for k targets)",
    "answer_acc": "the model halts and the token just before its first <HALT> is the answer",
    "halt_precision": "of the examples that emit <HALT>, the fraction whose first <HALT> is at the target loop",
    "halt_recall": "of all examples, the fraction whose first <HALT> is at the target loop",
    "mean_halt_p": "mean p(<HALT>) at the target halt loop",
    "per_loop_acc": "at loop i, over examples whose trace reaches loop i, the fraction with the right top-1 token",
    "loop_agreement": "over (example, target loop) pairs, the fraction where the ablated top-1 equals the intact top-1",
    "by_answer": "seen: the example's answer word is the answer of some training example; unseen: of none",
    "ci95": "Wilson score interval, 95%",
}


# ----------------------------------------------------------------------------------------------- rates

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials ((0, 1) when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict:
    """A rate with its count and Wilson 95% interval: {k, n, rate, ci95}; rate is None when n = 0."""
    k, n = int(k), int(n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": list(wilson(k, n))}


# ----------------------------------------------------------------------------------------------- metrics

def _as_matrix(rows, fill, dtype) -> np.ndarray:
    """A (N, L) array (or (N, L, K), rows of words) from an array or from ragged per-example lists, padded with
    `fill`."""
    if isinstance(rows, (np.ndarray, torch.Tensor)):
        return np.asarray(rows, dtype=dtype)
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width, *(np.shape(rows[0])[1:] if len(rows) else ())), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def absorb_halt(tokens, halt_id: int, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (N, >= width) with every loop from the first <HALT> on set to <HALT>, and that first loop (or -1).

    Words (N, >= width, K) (`rlf.model.word_of`) halt at slot 0; from then on a loop is [<HALT>, IGNORE, ...]."""
    tokens = _as_matrix(tokens, -1, np.int64)
    if tokens.shape[1] < width:
        pad = [(0, 0), (0, width - tokens.shape[1])] + [(0, 0)] * (tokens.ndim - 2)
        tokens = np.pad(tokens, pad, constant_values=-1)
    is_halt = (tokens if tokens.ndim == 2 else tokens[..., 0]) == halt_id
    first = np.where(is_halt.any(1), is_halt.argmax(1), -1)
    after = (first[:, None] >= 0) & (np.arange(tokens.shape[1])[None, :] >= first[:, None])
    if tokens.ndim == 3:
        halt_word = np.array([halt_id] + [IGNORE] * (tokens.shape[2] - 1))
        return np.where(after[..., None], halt_word, tokens), first
    return np.where(after, halt_id, tokens), first


def score(tokens, p_halt, target_ids: list[list[int]], halt_id: int, reference=None) -> dict[str, np.ndarray]:
    """Per-example outcomes of traces (top-1 ids per loop, -1 where a loop was not run) against per-loop targets.

    `tokens` and `p_halt` are (N, L) arrays or ragged lists; `reference` (the intact model's tokens) adds
    `agree`. Returns trace_ok, answer_ok, halted, halt_hit, halt_loop, halt_p (N,) and loop_ok, loop_mask
    (N, K + 1). Tokens after the first <HALT> count as <HALT> (halting is absorbing). With words (N, L, slots) as
    `tokens` (targets of up to `slots` tokens, as `solve` returns `words`) a loop is right when its whole word is.
    """
    k = np.array([len(t) for t in target_ids])  # the target halt loop (0-based)
    width = int(k.max()) + 1
    tokens, first = absorb_halt(tokens, halt_id, width)
    slots = tokens.shape[2] if tokens.ndim == 3 else 1
    targets = loop_targets(target_ids, halt_id, width, slots=slots).numpy()  # (N, K + 1), or (N, K + 1, slots)

    def same(a, b):  # loop by loop: the token, or every slot of the word, equal
        return a == b if slots == 1 else (a == b).all(-1)

    p_halt = _as_matrix(p_halt, np.nan, np.float64)
    rows = np.arange(len(k))
    halted = first >= 0
    loop_mask = np.arange(width)[None, :] <= k[:, None]  # (N, K + 1)
    loop_ok = same(tokens[:, :width], targets) & loop_mask
    answer = targets[rows, k - 1]  # the last target
    answer_ok = (first >= 1) & same(tokens[rows, np.maximum(first - 1, 0)], answer)
    reached = k < p_halt.shape[1]
    halt_p = np.full(len(k), np.nan)
    halt_p[reached] = p_halt[rows[reached], k[reached]]
    out = {"trace_ok": loop_ok.sum(1) == k + 1, "answer_ok": answer_ok, "halted": halted, "halt_hit": first == k,
           "halt_loop": first, "halt_p": halt_p, "loop_ok": loop_ok, "loop_mask": loop_mask}
    if reference is not None:
        ref, _ = absorb_halt(reference, halt_id, width)
        out["agree"] = same(tokens[:, :width], ref[:, :width]) & loop_mask
    return out


def summarize(s: dict[str, np.ndarray], select: np.ndarray | None = None) -> dict:
    """Aggregate per-example outcomes from `score` (optionally a boolean subset) into the metric dict."""
    if select is not None:
        s = {k: v[select] for k, v in s.items()}
    n = len(s["trace_ok"])
    halt_p = s["halt_p"][~np.isnan(s["halt_p"])]
    mask = s["loop_mask"]
    used = mask.any(0)
    out = {
        "n": n,
        "trace_acc": rate(s["trace_ok"].sum(), n),
        "answer_acc": rate(s["answer_ok"].sum(), n),
        "halt_precision": rate(s["halt_hit"].sum(), s["halted"].sum()),
        "halt_recall": rate(s["halt_hit"].sum(), n),
        "mean_halt_p": float(halt_p.mean()) if len(halt_p) else None,
        "per_loop_acc": [rate(ok, m) for ok, m in zip(s["loop_ok"].sum(0)[used], mask.sum(0)[used])],
    }
    if "agree" in s:
        out["loop_agreement"] = rate(s["agree"].sum(), mask.sum())
    return out


# ----------------------------------------------------------------------------------------------- ablations

def parse_ablations(text: str | None) -> dict[str, dict]:
    """`zero,noise,shuffle,scale=0.5` -> {name: keyword arguments of `RLFModel.solve`}; '' or 'none' -> {}."""
    out: dict[str, dict] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item or item == "none":
            continue
        if item == "zero":
            out[item] = {"gate_scale": 0.0}
        elif item in ("noise", "shuffle"):
            out[item] = {"prompt_mode": item}
        elif item.startswith("scale="):
            try:
                out[item] = {"gate_scale": float(item.split("=", 1)[1])}
            except ValueError:
                raise RLFError(f"--ablate {item!r}: the scale must be a number, e.g. scale=0.5") from None
        elif item.startswith(("clamp=", "offset=")):
            key, value = item.split("=", 1)
            if not value.isdigit():
                raise RLFError(f"--ablate {item!r}: the {key} must be a whole number of loops, e.g. {key}=3")
            out[item] = {f"loop_{key}": int(value)}
        else:
            raise RLFError(f"--ablate {item!r}: use zero, noise, shuffle, scale=S, clamp=C or offset=K "
                           "(comma-separated)")
    return out


@torch.no_grad()
def run_solve(model: RLFModel, split: Split, *, max_loops: int | None = None, batch_size: int = 64,
              ablation: dict | None = None, seed: int = 0, desc: str = "solve", progress: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """`model.solve` over a split: top-1 ids (N, W) and p(<HALT>) (N, W), padded with -1 / nan.

    Each batch runs at least to its longest target halt loop and at most `max_loops` (default: twice that); its noise
    or shuffle draws come from (seed, batch). Under torchrun each rank solves every size-th batch and all ranks get
    every result: the same batches as one process, so the same numbers.
    """
    model.eval()
    n = len(split.examples)
    order = sorted(range(n), key=lambda i: len(split.target_ids[i]))  # batches of similar trace length
    device = next(model.parameters()).device
    world = distributed.join()
    batches = world.shard(list(enumerate(order[i : i + batch_size] for i in range(0, n, batch_size))))
    solved = []
    for b, idx in tqdm(batches, desc=desc, unit="batch", disable=not progress or not world.main, dynamic_ncols=True,
                       leave=False):
        x, lengths, tids = split.batch(idx)
        need = loops_needed(tids)
        limit = max_loops or 2 * need
        gen = torch.Generator().manual_seed(seed * 100_003 + b)
        out = model.solve(x.to(device), lengths, limit, min_loops=min(need, limit), generator=gen,
                          **split.model_inputs(idx), **(ablation or {}))
        words = out.get("words", out["tokens"])  # (B, L), or (B, L, K) with K slots
        solved.append((idx, words.cpu().numpy(), out["p_halt"].float().cpu().numpy()))
    toks, phs = [None] * n, [None] * n
    for idx, t, p in (batch for rank in distributed.all_gather(solved) for batch in rank):
        for row, i in enumerate(idx):
            toks[i], phs[i] = t[row], p[row]
    return _as_matrix(toks, -1, np.int64), _as_matrix(phs, np.nan, np.float64)


def evaluate_split(model: RLFModel, split: Split, ablations: dict[str, dict] | None = None, *,
                   max_loops: int | None = None, batch_size: int = 64, seed: int = 0, name: str = "split",
                   progress: bool = False, trained_answers: set[str] | None = None) -> dict:
    """{condition: {"overall": metrics, "by_hops": {hops: metrics}}} for the intact model and each ablation.

    With `trained_answers` (the answers of the training set) each condition also has "by_answer": the metrics
    where the example's answer was a training answer ("seen") and where it never was ("unseen"): whether the
    model reads out any word or the words it was trained to say.
    """
    conditions = {"intact": None, **(ablations or {})}
    hops = np.array([ex.hops for ex in split.examples])
    seen = None if trained_answers is None else np.array([ex.answer in trained_answers for ex in split.examples])
    intact_tokens = None
    result = {}
    for c, (cond, kwargs) in enumerate(conditions.items()):
        tokens, p_halt = run_solve(model, split, max_loops=max_loops, batch_size=batch_size, ablation=kwargs,
                                   seed=seed + c, desc=f"eval {name} {cond}", progress=progress)
        s = score(tokens, p_halt, split.target_ids, model.halt_id, reference=intact_tokens)
        if intact_tokens is None:
            intact_tokens = tokens
        result[cond] = {"overall": summarize(s), "by_hops": {str(h): summarize(s, hops == h) for h in np.unique(hops)}}
        if seen is not None:
            result[cond]["by_answer"] = {"seen": summarize(s, seen), "unseen": summarize(s, ~seen)}
    return result


# ----------------------------------------------------------------------------------------------- data

def train_hops(run_dir: Path, cfg) -> list[int]:
    """The hop counts a run was trained on (from its train.jsonl when present, else its config)."""
    path = Path(run_dir) / "train.jsonl"
    if path.is_file():
        return sorted({ex.hops for ex in read_jsonl(path)})
    return parse_hops(cfg.hops)


def seen_prompts(run_dir: Path) -> set[str]:
    """The prompts of a run's train.jsonl and val.jsonl (held-out sets exclude them)."""
    return {ex.prompt for f in ("train.jsonl", "val.jsonl") if (Path(run_dir) / f).is_file()
            for ex in read_jsonl(Path(run_dir) / f)}


def trained_answers(run_dir: Path) -> set[str] | None:
    """The answers of a run's train.jsonl (None when the run directory has none)."""
    path = Path(run_dir) / "train.jsonl"
    return {ex.answer for ex in read_jsonl(path)} if path.is_file() else None


def heldout_examples(cfg, tokenizer, hops: list[int], n: int, exclude=(), seed_offset: int = HELDOUT_SEED_OFFSET
                     ) -> list[Example]:
    """`n` examples per hop count of the run's task (and chain options and pools), from a seed no training split
    uses. A chain run's `eval_distractors`, when set, replaces its training `distractors` here: a model trained on
    larger memories is measured on its protocol's."""
    opts = chain_options(cfg)
    if cfg.task == "chain" and cfg.eval_distractors is not None:
        opts["distractors"] = cfg.eval_distractors
    exclude = set(exclude)
    out = []
    for h in hops:  # one seed per hop: a hop's set does not depend on which other hops are asked for
        out += generate(cfg.task, n, [h], cfg.data_seed + seed_offset + h, tokenizer, exclude_prompts=exclude,
                        id_prefix=f"{cfg.task}-eval", **opts)
    return out


def eval_sets(run: LoadedRun, run_dir: Path, data_files=(), hops: list[int] | None = None, n: int = 1000
              ) -> dict[str, list[Example]]:
    """Named example sets: one per --data file, else generated in-distribution and OOD hop sets."""
    sets = {Path(f).stem: read_jsonl(f) for f in data_files}
    if hops is None and data_files:
        return sets
    trained = train_hops(run_dir, run.config)
    hops = hops if hops is not None else trained + default_ood_hops(trained)
    seen = seen_prompts(run_dir)
    for name, hs in (("in-distribution", [h for h in hops if h in trained]),
                     ("ood", [h for h in hops if h not in trained])):
        if hs:
            sets[name] = heldout_examples(run.config, run.base.tokenizer, hs, n, exclude=seen)
    return sets


def evaluate(run_dir: str | Path, *, data_files=(), hops: list[int] | str | None = None, n: int = 1000,
             ablations: str | None = DEFAULT_ABLATIONS, max_loops: int | None = None, batch_size: int = 64,
             seed: int = 0, run: LoadedRun | None = None, progress: bool = True, write: bool = True,
             ablate_splits: list[str] | None = None) -> dict:
    """Evaluate a run on its held-out sets (and ablations); write eval.json + eval.md into the run directory.

    `ablate_splits` names the splits the ablations run on (default: all).
    """
    run_dir = Path(run_dir)
    run = run or load_run(run_dir)
    if run.config.supervision == "answer_once":
        raise RLFError(f"{run_dir}: a no-loop run (supervision=answer_once) has no trace to evaluate; "
                       "`rlf bench headline` measures its answer accuracy at loop 1")
    if isinstance(hops, str):
        hops = parse_hops(hops)
    if n <= 0:
        raise RLFError(f"--n {n}: must be a positive number of examples per hop count")
    abl = parse_ablations(ablations)
    clocked = [name for name, kw in abl.items() if {"loop_offset", "loop_clamp"} & set(kw)]
    if clocked and run.config.loop_pos == "none":  # refused before any evaluation runs, not after the first one
        raise RLFError(f"--ablate {','.join(clocked)}: {run_dir} has no loop position (loop_pos=none) to move")
    sets = eval_sets(run, run_dir, data_files, hops, n)
    result = {"run": str(run_dir), "max_loops": max_loops or "2 x (target halt loop)", "seed": seed,
              "ablations": abl,
              "definitions": DEFINITIONS, "splits": {}}
    answers = trained_answers(run_dir)
    world = distributed.join()
    for name, examples in sets.items():
        if write and world.main and not any(name == Path(f).stem for f in data_files):
            (run_dir / "eval_data").mkdir(parents=True, exist_ok=True)
            write_jsonl(examples, run_dir / "eval_data" / f"{name}.jsonl")
        split = prepare_split(examples, run.base, run.config, name, progress and world.main)
        log.info("evaluating %s: %d examples, hops %s", name, len(examples), sorted({ex.hops for ex in examples}))
        result["splits"][name] = {
            "n": len(examples), "hops": sorted({ex.hops for ex in examples}),
            "conditions": evaluate_split(run.model, split, abl if ablate_splits is None or name in ablate_splits else {},
                                         max_loops=max_loops, batch_size=batch_size,
                                         seed=seed, name=name, progress=progress, trained_answers=answers),
        }
    def write_results() -> None:
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
        (run_dir / "eval.md").write_text(render_markdown(result))

    if write:
        distributed.main_first(write_results)  # rank 0 writes; every rank returns once it has
    return result


# ----------------------------------------------------------------------------------------------- reporting

def fmt_rate(r: dict | None, short: bool = False) -> str:
    """`97.3% [96.2, 98.1] (973/1000)`; `short` drops the interval."""
    if not r or r["rate"] is None:
        return "n/a (0/0)"
    if short:
        return f"{100 * r['rate']:.1f}% ({r['k']}/{r['n']})"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({r['k']}/{r['n']})"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def headline_rows(result: dict, ablation: str = "zero") -> list[list[str]]:
    """One row per split: n, trace/answer accuracy, halt precision, and the `ablation`'s accuracy and agreement."""
    rows = []
    for name, sp in result["splits"].items():
        intact = sp["conditions"]["intact"]["overall"]
        abl = sp["conditions"].get(ablation, {}).get("overall")
        rows.append([name, ",".join(map(str, sp["hops"])), str(sp["n"]), fmt_rate(intact["trace_acc"]),
                     fmt_rate(intact["answer_acc"]), fmt_rate(intact["halt_precision"]),
                     fmt_rate(abl["trace_acc"]) if abl else "-", fmt_rate(abl["loop_agreement"]) if abl else "-"])
    return rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def render_markdown(result: dict) -> str:
    """eval.md: the headline per split, per-hop tables, ablations and per-loop accuracy, with definitions."""
    out = [f"# Evaluation of `{result['run']}`\n\n",
           f"max loops per example: {result['max_loops']}; rates are `rate [95% Wilson interval] (count/n)`.\n",
           "\n## Headline\n\n",
           md_table(["split", "hops", "n", "trace acc", "answer acc", "halt precision", "gate=0 trace acc",
                     "gate=0 loop agreement"], headline_rows(result))]
    for name, sp in result["splits"].items():
        conds = sp["conditions"]
        out.append(f"\n## {name} (n = {sp['n']})\n\n")
        rows = []
        for h, m in [*conds["intact"]["by_hops"].items(), ("all", conds["intact"]["overall"])]:
            rows.append([h, str(m["n"]), fmt_rate(m["trace_acc"]), fmt_rate(m["answer_acc"]),
                         fmt_rate(m["halt_precision"]), fmt_rate(m["halt_recall"]), _fmt_p(m["mean_halt_p"])])
        out.append(md_table(["hops", "n", "trace acc", "answer acc", "halt precision", "halt recall",
                             "mean p(HALT)"], rows))
        if "by_answer" in conds["intact"]:
            out.append(f"\n### {name}: answer word seen as a training answer or not\n\n")
            rows = [[group, str(m["n"]), fmt_rate(m["trace_acc"]), fmt_rate(m["answer_acc"])]
                    for group, m in conds["intact"]["by_answer"].items()]
            out.append(md_table(["answer word", "n", "trace acc", "answer acc"], rows))
        if len(conds) > 1:
            out.append(f"\n### {name}: ablations at inference\n\n")
            rows = []
            for cond, c in conds.items():
                for h, m in [*c["by_hops"].items(), ("all", c["overall"])]:
                    rows.append([cond, h, fmt_rate(m["trace_acc"]), fmt_rate(m["answer_acc"]),
                                 fmt_rate(m.get("loop_agreement")) if cond != "intact" else "-"])
            out.append(md_table(["condition", "hops", "trace acc", "answer acc", "loop agreement"], rows))
        out.append(f"\n### {name}: per-loop accuracy (intact)\n\n")
        hop_keys = list(conds["intact"]["by_hops"])
        width = max(len(m["per_loop_acc"]) for m in conds["intact"]["by_hops"].values())
        rows = [[str(i + 1)] + [fmt_rate(conds["intact"]["by_hops"][h]["per_loop_acc"][i], short=True)
                                if i < len(conds["intact"]["by_hops"][h]["per_loop_acc"]) else ""
                                for h in hop_keys] for i in range(width)]
        out.append(md_table(["loop"] + [f"{h} hops" for h in hop_keys], rows))
    out.append("\n## Definitions\n\n" + "".join(f"- **{k}**: {v}\n" for k, v in result["definitions"].items()))
    out.append("- **ablations**: " + ", ".join(f"`{k}` = {v}" for k, v in result["ablations"].items()) + "\n"
               if result["ablations"] else "")
    return "".join(out)
