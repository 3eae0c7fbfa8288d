"""Probes of a trained run (`rlf probe RUN`), each writing a PNG and a JSON of its numbers.

- fsm: PCA of the answer-position loop state over every target loop of many held-out chains; the variance
  two components explain, and the points coloured by loop (the "finite-state machine" picture).
- gate_partition: lifeline gate dimensions amplified (> 1 + T), suppressed (< 1 - T) or neutral relative to
  their initial value 1.0; histogram.
- gate_ablation: trace accuracy with only the amplified (or only the suppressed) dimensions zeroed, against
  random dimension sets of the same size, and with the whole gate zeroed.
- trajectory: PCA paths of the loop state of one chain over N loops, lifeline intact (solid) and severed
  (dashed), the top-1 token of each loop annotated, the loop agreement in the title.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from rlf.evaluate import fmt_rate, heldout_examples, run_solve, score, seen_prompts, summarize, train_hops
from rlf.model import RLFModel, loops_needed
from rlf.train import LoadedRun, Split, prepare_split

log = logging.getLogger(__name__)

GATE_INIT = 1.0


def pca(points: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of `points` (N, d) on their first k principal components, and every component's variance ratio."""
    centred = points - points.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    return u[:, :k] * s[:k], var / var.sum()


def _save(fig: Figure, out: Path, name: str, numbers: dict) -> dict:
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    (out / f"{name}.json").write_text(json.dumps(numbers, indent=2))
    return numbers


def _token_text(tokenizer, halt_id: int, tok: int) -> str:
    return "<HALT>" if tok == halt_id else tokenizer.decode([tok]).strip()


# ----------------------------------------------------------------------------------------------- FSM

@torch.no_grad()
def target_loop_states(model: RLFModel, split: Split, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Answer-position states at every target loop of every example (P, d), and each one's loop (1-based)."""
    device = next(model.parameters()).device
    states, loops = [], []
    for i in range(0, len(split.examples), batch_size):
        idx = list(range(i, min(i + batch_size, len(split.examples))))
        x, lengths, tids = split.batch(idx)
        n_loops = loops_needed(tids)
        _, h = model(x.to(device), lengths, n_loops, return_states=True, **split.model_inputs(idx))  # (B, L, d)
        for row, t in enumerate(tids):
            states.append(h[row, : len(t) + 1].float().cpu().numpy())
            loops.append(np.arange(1, len(t) + 2))
    return np.concatenate(states), np.concatenate(loops)


def probe_fsm(model: RLFModel, split: Split, out: Path) -> dict:
    """PCA of the loop state across loops for many chains: fsm.png + fsm.json."""
    states, loops = target_loop_states(model, split)
    coords, ratio = pca(states)
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=loops, cmap="viridis", s=8, alpha=0.7)
    fig.colorbar(sc, ax=ax, label="loop")
    ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f}%)", ylabel=f"PC2 ({100 * ratio[1]:.1f}%)",
           title=f"Loop states of {len(split.examples)} chains: 2 PCs explain {100 * ratio[:2].sum():.1f}%")
    centroids = {int(i): coords[loops == i].mean(0).round(4).tolist() for i in np.unique(loops)}
    return _save(fig, out, "fsm", {
        "n_chains": len(split.examples), "n_points": len(states), "hops": sorted({ex.hops for ex in split.examples}),
        "variance_explained": [float(r) for r in ratio[:2]], "variance_explained_2": float(ratio[:2].sum()),
        "loop_centroids": centroids,
    })


# ----------------------------------------------------------------------------------------------- gate

def gate_partition(model: RLFModel, out: Path, threshold: float = 0.1) -> dict:
    """Gate dimensions amplified / suppressed / neutral relative to the init 1.0: gate_partition.png + .json."""
    if model.cfg.lifeline == "none":
        return _skip(out, "gate_partition", "lifeline=none: the model has no gate")
    gate = model.lifeline_gate.detach().float().cpu().numpy()
    groups = {"amplified": np.flatnonzero(gate > GATE_INIT + threshold),
              "suppressed": np.flatnonzero(gate < GATE_INIT - threshold)}
    groups["neutral"] = np.setdiff1d(np.arange(len(gate)), np.concatenate(list(groups.values())))
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    ax.hist(gate, bins=60, color="0.4")
    for x, style in ((GATE_INIT - threshold, "--"), (GATE_INIT, ":"), (GATE_INIT + threshold, "--")):
        ax.axvline(x, color="tab:red", linestyle=style, linewidth=1)
    ax.set(xlabel="lifeline gate value (init 1.0)", ylabel="dimensions",
           title=" / ".join(f"{k} {len(v)} ({100 * len(v) / len(gate):.0f}%)" for k, v in groups.items())
           + f"; thresholds 1 ± {threshold:g}")
    return _save(fig, out, "gate_partition", {
        "lifeline": model.cfg.lifeline, "init": GATE_INIT, "threshold": threshold,
        "rule": f"amplified: gate > {GATE_INIT + threshold:g}; suppressed: gate < {GATE_INIT - threshold:g}; "
                "neutral: otherwise",
        "n_dims": len(gate), "counts": {k: len(v) for k, v in groups.items()},
        "fractions": {k: len(v) / len(gate) for k, v in groups.items()},
        "gate": {"min": float(gate.min()), "max": float(gate.max()), "mean": float(gate.mean()),
                 "std": float(gate.std())},
        "dims": {k: v.tolist() for k, v in groups.items() if k != "neutral"},
    })


def _skip(out: Path, name: str, reason: str) -> dict:
    log.info("probe %s skipped: %s", name, reason)
    numbers = {"skipped": reason}
    (out / f"{name}.json").write_text(json.dumps(numbers, indent=2))
    return numbers


def _trace_acc(model: RLFModel, split: Split, gate_scale) -> dict:
    tokens, p_halt = run_solve(model, split, ablation={"gate_scale": gate_scale})
    return summarize(score(tokens, p_halt, split.target_ids, model.halt_id))["trace_acc"]


def gate_ablation(model: RLFModel, split: Split, partition: dict, out: Path, random_sets: int = 5, seed: int = 0
                  ) -> dict:
    """Trace accuracy with the amplified / suppressed gate dimensions zeroed vs random sets of the same size."""
    if "skipped" in partition:
        return _skip(out, "gate_ablation", partition["skipped"])
    d = partition["n_dims"]
    device = model.lifeline_gate.device
    rng = np.random.default_rng(seed)

    def zeroed(dims) -> torch.Tensor:
        mask = torch.ones(d, device=device)
        mask[torch.as_tensor(np.asarray(dims, dtype=np.int64), device=device)] = 0.0
        return mask

    results = {"intact": _trace_acc(model, split, 1.0), "all zeroed": _trace_acc(model, split, 0.0)}
    groups = {}
    for name in ("amplified", "suppressed"):
        dims = partition["dims"][name]
        if not dims:
            groups[name] = {"size": 0, "note": "empty group: nothing to zero"}
            continue
        own = _trace_acc(model, split, zeroed(dims))
        rand = [_trace_acc(model, split, zeroed(rng.choice(d, len(dims), replace=False))) for _ in range(random_sets)]
        rates = np.array([r["rate"] for r in rand])
        groups[name] = {"size": len(dims), "zeroed": own, "drop": results["intact"]["rate"] - own["rate"],
                        "random": {"sets": random_sets, "mean": float(rates.mean()), "std": float(rates.std()),
                                   "min": float(rates.min()), "max": float(rates.max()), "each": rand},
                        "random_drop": results["intact"]["rate"] - float(rates.mean())}
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    bars = [("intact", results["intact"]["rate"], 0.0, "0.3")]
    for name, g in groups.items():
        if g["size"]:
            bars += [(f"{name}\nzeroed ({g['size']})", g["zeroed"]["rate"], 0.0, "tab:blue"),
                     (f"random {g['size']}\n(x{random_sets})", g["random"]["mean"], g["random"]["std"], "0.7")]
    bars.append(("all zeroed", results["all zeroed"]["rate"], 0.0, "tab:red"))
    labels, heights, errors, colours = zip(*bars)
    drawn = ax.bar(range(len(bars)), heights, yerr=errors, color=colours, capsize=4)
    ax.bar_label(drawn, labels=[f"{100 * h:.1f}%" for h in heights], fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="trace accuracy", title=f"Causal gate ablation on {len(split.examples)} chains")
    return _save(fig, out, "gate_ablation", {"n": len(split.examples), "threshold": partition["threshold"],
                                             **results, "groups": groups})


# ----------------------------------------------------------------------------------------------- trajectory

@torch.no_grad()
def trajectory(model: RLFModel, split: Split, tokenizer, out: Path, index: int = 0, n_loops: int | None = None
               ) -> dict:
    """PCA paths of one chain's loop state, lifeline intact (solid) vs severed (dashed): trajectory.png + .json."""
    x, lengths, tids = split.batch([index])
    n_loops = n_loops or max(10, len(tids[0]) + 1)
    device = next(model.parameters()).device
    paths, tokens = {}, {}
    for name, scale in (("intact", 1.0), ("severed", 0.0)):
        logits, h = model(x.to(device), lengths, n_loops, gate_scale=scale, return_states=True,
                          **split.model_inputs([index]))
        paths[name] = h[0].float().cpu().numpy()
        top = logits[0].argmax(-1)  # (L,), or (L, K) with K slots: then slot 0, a word's first token or <HALT>
        tokens[name] = (top if top.dim() == 1 else top[:, 0]).cpu().tolist()
    coords, ratio = pca(np.concatenate([paths["intact"], paths["severed"]]))
    agree = sum(a == b for a, b in zip(tokens["intact"], tokens["severed"]))
    text = {k: [_token_text(tokenizer, model.halt_id, t) for t in v] for k, v in tokens.items()}
    fig = Figure(figsize=(7, 5.5))
    ax = fig.subplots()
    for (name, style, colour), part in zip((("intact", "-", "tab:blue"), ("severed", "--", "tab:orange")),
                                           (coords[:n_loops], coords[n_loops:])):
        ax.plot(part[:, 0], part[:, 1], style, color=colour, marker="o", markersize=4, label=f"lifeline {name}")
        for i, (px, py) in enumerate(part):
            label = text[name][i].encode("ascii", "backslashreplace").decode()  # the font lacks most scripts
            ax.annotate(f"{i + 1}:{label}", (px, py), fontsize=7, color=colour,
                        xytext=(3, 3 if name == "intact" else -9), textcoords="offset points")
    ex = split.examples[index]
    ax.legend()
    ax.set(xlabel=f"PC1 ({100 * ratio[0]:.1f}%)", ylabel=f"PC2 ({100 * ratio[1]:.1f}%)",
           title=f"{ex.hops}-hop chain, {n_loops} loops: {agree}/{n_loops} loops agree with the lifeline severed")
    return _save(fig, out, "trajectory", {
        "prompt": ex.prompt, "targets": ex.targets, "n_loops": n_loops, "tokens": text,
        "loop_agreement": {"k": agree, "n": n_loops, "rate": agree / n_loops},
        "variance_explained": [float(r) for r in ratio[:2]],
        "coords": {"intact": coords[:n_loops].round(4).tolist(), "severed": coords[n_loops:].round(4).tolist()},
    })


# ----------------------------------------------------------------------------------------------- all

def run_probes(run: LoadedRun, run_dir: str | Path, out: str | Path | None = None, n: int = 256,
               gate_threshold: float = 0.1, random_sets: int = 5, seed: int = 0, progress: bool = True,
               ablation_n: int | None = None) -> dict:
    """Every probe on `n` held-out chains at the training hops (the causal ablation on the first `ablation_n`,
    default all); files into `out` (default RUN/probes)."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "probes"
    out.mkdir(parents=True, exist_ok=True)
    hops = train_hops(run_dir, run.config)
    examples = heldout_examples(run.config, run.base.tokenizer, hops, math.ceil(n / len(hops)),
                                exclude=seen_prompts(run_dir))[:n]
    split = prepare_split(examples, run.base, run.config, "probe chains", progress)
    model = run.model.eval()
    longest = max(range(len(examples)), key=lambda i: (examples[i].hops, -i))  # the first chain of the most hops
    results = {"out": str(out), "fsm": probe_fsm(model, split, out)}
    results["gate_partition"] = gate_partition(model, out, gate_threshold)
    m = min(ablation_n or n, len(examples))
    first_m = Split(examples[:m], split.encoded, split.target_ids[:m],  # encodings are indexed by position
                    None if split.prompt_ids is None else split.prompt_ids[:m])
    results["gate_ablation"] = gate_ablation(model, first_m, results["gate_partition"], out, random_sets, seed)
    results["trajectory"] = trajectory(model, split, run.base.tokenizer, out, index=longest)
    return results


def probe_summary(results: dict) -> str:
    """The probes' headline numbers, as Markdown lines."""
    fsm, part, abl, traj = (results[k] for k in ("fsm", "gate_partition", "gate_ablation", "trajectory"))
    lines = [f"- FSM: 2 principal components explain {100 * fsm['variance_explained_2']:.1f}% of the loop-state "
             f"variance ({fsm['n_points']} states of {fsm['n_chains']} chains) — `fsm.png`"]
    if "skipped" in part:
        lines.append(f"- gate partition, causal gate ablation: skipped ({part['skipped']})")
    else:
        lines.append(f"- gate partition ({part['rule']}): " + ", ".join(
            f"{k} {v} ({100 * part['fractions'][k]:.1f}%)" for k, v in part["counts"].items())
            + " — `gate_partition.png`")
        parts = [f"intact {fmt_rate(abl['intact'])}"]
        for name, g in abl["groups"].items():
            if g["size"]:
                parts.append(f"{name} zeroed {fmt_rate(g['zeroed'])} vs random {g['size']} dims "
                             f"{100 * g['random']['mean']:.1f}% ± {100 * g['random']['std']:.1f}")
        parts.append(f"whole gate zeroed {fmt_rate(abl['all zeroed'])}")
        lines.append("- causal gate ablation (trace acc): " + "; ".join(parts) + " — `gate_ablation.png`")
    lines.append(f"- trajectory: {traj['loop_agreement']['k']}/{traj['n_loops']} loops agree with the lifeline "
                 f"severed — `trajectory.png`")
    return f"Probes in {results['out']}:\n" + "\n".join(lines)
