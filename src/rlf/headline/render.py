"""RESULTS.md from the committed parts alone: the current parts of each job make a column (summed over hop counts where
a row spans several: the rates keep their counts), a cell whose parts are missing or stale reads "—", every column
says when, on what machine and with which weights it was measured, and the stale parts are listed, never used."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rlf.evaluate import fmt_rate, md_table, rate
from rlf.headline.measure import CLOCK_HOLD, CLOCK_OFFSET, FORCED_FACTOR, GEN_TOKENS, TARGET_ACC
from rlf.headline.parts import NOT_MEASURED, PARTS_FOLDER, Part
from rlf.headline.plan import CORES, PROTOCOLS, HeldOut, Job

# What SPEC.md states of the seeds' results (its §1 and §5) and the measured reference point of its §6 (the
# seeds' recipe on a 2-core CPU, Mamba2 core, forward chains of 1-5 hops). The spec gives no other cell.
SEEDS = {
    "zero_agreement": "SSM: 9/10 loops identical; attention: not removable",
    "memory_growth": "O(1) per loop (required)",
    "steps_to_target": "≈ 0 until step ~300, 90% at step 600 (§6 reference, Mamba2)",
    "examples_per_s": "≈ 7.6 (4.2 s per step of 32; §6 reference, Mamba2)",
}

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
    "ci95": "rates are `rate [95% Wilson interval] (count/n)`; a rate over several hop counts sums their counts",
    "stale": "a part whose key (config digest, held-out set digest, measurement code version and settings, seed) "
             "is no longer the key its job gets, or whose job was measured again with another config later",
}


# ----------------------------------------------------------------------------------------------- columns

@dataclass
class Column:
    """The current parts of one job: their values by hop count and kind, and those measured on the run."""

    job: Job
    label: str
    train_hops: list[int]
    hops: dict[int, dict[str, dict]]
    run: dict[str, dict]
    parts: list[Part]

    def over(self, kind: str, hops: list[int], get) -> dict | None:
        """`get(value)` of the `kind` parts at `hops`, summed into one rate; None unless every one is there."""
        rates = [get(self.hops[h][kind]) if kind in self.hops.get(h, {}) else None for h in hops]
        if not rates or any(r is None for r in rates):
            return None
        return rate(sum(r["k"] for r in rates), sum(r["n"] for r in rates))


@dataclass
class Protocol:
    """The columns of one protocol."""

    name: str
    train_hops: list[int]
    ood_hops: list[int]
    cores: list[Column]
    no_loop: list[Column]
    base_alone: list[Column]
    ablations: list[Column]

    def columns(self) -> list[Column]:
        return self.cores + self.no_loop + self.base_alone + self.ablations


def intact(metric: str):
    return lambda v: v["conditions"]["intact"]["overall"][metric]


def trace(v: dict) -> dict:
    return v["trace_acc"]


def assemble(parts: list[Part], heldout: HeldOut) -> dict[str, Protocol]:
    """The protocols (in PROTOCOLS order) and their columns, from the current parts."""
    groups: dict[tuple, list[Part]] = {}
    for p in parts:
        if not p.changed:
            groups.setdefault((p.spec["role"], p.job.part_dir, p.spec["variant"]), []).append(p)
    columns = []
    for (role, _, variant), ps in groups.items():
        job = ps[0].job
        hops: dict[int, dict[str, dict]] = {}
        for p in sorted(ps, key=lambda p: p.hops or 0):
            if p.hops is not None:
                hops.setdefault(p.hops, {})[p.kind] = p.value
        columns.append(Column(job, variant if role == "ablation" else job.core, heldout.train_hops(job.cfg), hops,
                              {p.kind: p.value for p in ps if p.hops is None}, ps))
    order = {name: i for i, name in enumerate([*PROTOCOLS, *CORES])}
    columns.sort(key=lambda c: (order.get(c.job.protocol, len(order)), order.get(c.job.core, len(order)),
                                c.job.cfg.seed, c.job.variant))
    seeds: dict[tuple, set[int]] = {}  # several seeds of one model side by side: say which is which
    for c in columns:
        seeds.setdefault((c.job.protocol, c.job.role, c.label), set()).add(c.job.cfg.seed)
    for c in columns:
        if len(seeds[(c.job.protocol, c.job.role, c.label)]) > 1:
            c.label += f", seed {c.job.cfg.seed}"
    protocols = {}
    for name in dict.fromkeys(c.job.protocol for c in columns):
        mine = [c for c in columns if c.job.protocol == name]
        by_role = {role: [c for c in mine if c.job.role == role] for role in ("main", "no_loop", "base_alone",
                                                                               "ablation")}
        protocols[name] = Protocol(name, mine[0].train_hops, sorted({h for c in mine for h in c.hops
                                                                     if h not in c.train_hops}),
                                   by_role["main"], by_role["no_loop"], by_role["base_alone"], by_role["ablation"])
    return protocols


# ----------------------------------------------------------------------------------------------- tables

def cell(r: dict | None, short: bool = False) -> str:
    return "—" if r is None else fmt_rate(r, short=short)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s ({s / 60:.1f} min)" if s >= 60 else f"{s:.1f} s"


def steps_cell(t: dict) -> str:
    """Steps and training time to the target val accuracy, and that time plus encoding the run's data from scratch."""
    to, enc = t["to_target"], t.get("encode_cost_seconds")
    if to["step"] is None:
        return "not reached"
    with_encoding = "" if enc is None else f"; {fmt_seconds(to['train_seconds'] + enc)} with encoding from scratch"
    return f"{to['step']} ({fmt_seconds(to['train_seconds'])}{with_encoding})"


def headline_table(proto: Protocol) -> str:
    """The side-by-side table of one protocol: one column per core, and the seeds' numbers where SPEC gives them."""
    seeds = proto.name == "forward"
    hops = proto.train_hops

    def row(label: str, fn, seed: str = "—") -> list[str]:
        return [label] + [fn(c) for c in proto.cores] + [seed if seeds else "—"]

    def run(kind: str, fn):
        return lambda c: "—" if kind not in c.run else fn(c.run[kind])

    def clock(hop_counts: list[int], get):
        return lambda c: ("no loop position" if c.job.cfg.loop_pos == "none"
                          else cell(c.over("clock", hop_counts, get)))

    def mem_peak(mem: dict) -> str:
        where = "fresh process" if mem["fresh_process"] else "in process"
        return (f"{max(mem['peak_mb']):.1f} MB (batch {mem['batch_size']}, up to {mem['loops'][-1]} loops, "
                f"{mem['method']}, {where})")

    def unseen(v: dict) -> dict:
        return v["conditions"]["intact"]["by_answer"]["unseen"]["trace_acc"]

    def zero(metric: str):
        return lambda c: cell(c.over("main", c.train_hops, lambda v: v["conditions"]["zero"]["overall"][metric]))

    rows = [row(f"in-distribution trace accuracy (hops {hops[0]}-{hops[-1]})",
                lambda c: cell(c.over("main", c.train_hops, intact("trace_acc")))),
            row("halt precision (in distribution)", lambda c: cell(c.over("main", c.train_hops,
                                                                          intact("halt_precision")))),
            row("in-distribution trace accuracy, answer word never a training answer",
                lambda c: cell(c.over("main", c.train_hops, unseen)))]
    rows += [row(f"OOD trace accuracy, {h} hops", lambda c, h=h: cell(c.over("main", [h], intact("trace_acc"))))
             for h in proto.ood_hops]
    rows += [row(f"OOD trace accuracy, {h} hops, loop clock held at loop {CLOCK_HOLD + 1} (inference)",
                 clock([h], trace)) for h in proto.ood_hops]
    rows += [
        row("lifeline at 0: loop agreement", zero("loop_agreement"), SEEDS["zero_agreement"]),
        row("lifeline at 0: trace accuracy", zero("trace_acc")),
        row(f"loop clock moved {CLOCK_OFFSET} loops ahead: in-distribution chains halting early",
            lambda c: clock(c.train_hops, lambda v: v["early_halt"])(c)),
        row("peak inference memory", run("memory", mem_peak)),
        row("memory growth per loop", run("memory", lambda m: f"{m['growth_mb_per_loop']:+.4f} MB/loop "
                                                              f"({'flat' if m['flat'] else 'GROWS'})"),
            SEEDS["memory_growth"]),
        row(f"steps to {100 * TARGET_ACC:.0f}% val trace acc", run("training", steps_cell), SEEDS["steps_to_target"]),
        row("training wall time", run("training", lambda t: f"{fmt_seconds(t['train_seconds'])}, {t['steps']} steps "
                                                            f"({t['stopped']})")),
        row("examples/s (training)", run("training", lambda t: f"{t['examples_per_s']:.1f}"),
            SEEDS["examples_per_s"]),
        row("tokens/s (training)", run("training", lambda t: f"{t['tokens_per_s']:.0f} "
                                                             f"({t['mean_prompt_tokens']:.1f} tokens/prompt)")),
    ]
    return md_table(["metric", *(c.label for c in proto.cores), "seeds / reference (SPEC)"], rows)


def baseline_table(proto: Protocol) -> str:
    """Answer accuracy in distribution and per OOD hop: the loop models, the base alone, the no-loop models."""
    def cells(c: Column, kind: str, get) -> list[str]:
        return [cell(c.over(kind, c.train_hops, get))] + [cell(c.over(kind, [h], get)) for h in proto.ood_hops]

    rows = [[f"RLF, {c.label} core (loop)"] + cells(c, "main", intact("answer_acc")) for c in proto.cores]
    for c in proto.base_alone:
        b = next(iter(next(iter(c.hops.values())).values()))
        what = f"{b['base']}, {b['layers']} layers, first word of {b['generated_tokens']} greedy tokens"
        rows.append([f"base alone ({what}, the run's template)"] + cells(c, "base_alone", lambda v: v["answers"]))
        if any("chat_answers" in v["base_alone"] for v in c.hops.values()):
            rows.append([f"base alone ({what}, the prompt as a chat user turn)"]
                        + cells(c, "base_alone", lambda v: v.get("chat_answers")))
    rows += [[f"no loop, {c.label} core once (answer-only target)"] + cells(c, "no_loop", lambda v: v["answers"])
             for c in proto.no_loop]
    return md_table(["model (answer accuracy)", "in distribution", *(f"{h} hops" for h in proto.ood_hops)], rows)


def stability_table(proto: Protocol) -> str:
    rows = []
    for split in ("in-distribution", "ood"):
        for metric, label in (("forced_trace_acc", "forced trace accuracy"), ("halt_absorbing", "halt absorbing"),
                              ("answer_unchanged", "answer unchanged")):
            rows.append([f"{split}: {label}"] + [
                cell(c.over("main", c.train_hops if split == "in-distribution" else proto.ood_hops,
                            lambda v, m=metric: v["stability"][m])) for c in proto.cores])
    return md_table([f"loop forced to {FORCED_FACTOR} x the needed loops", *(c.label for c in proto.cores)], rows)


def histogram_table(hist: dict) -> str:
    rows = [[h, ",".join(map(str, v["target_loop"])), fmt_rate(v["early"], short=True),
             fmt_rate(v["at_target"], short=True), fmt_rate(v["late"], short=True), fmt_rate(v["never"], short=True),
             " ".join(f"{loop}:{c}" for loop, c in v["counts"].items())]
            for h, v in sorted(hist.items(), key=lambda kv: int(kv[0]))]
    return md_table(["hops", "target loop", "early", "at target", "late", "never", "first <HALT> loop: count"], rows)


def ablation_table(proto: Protocol, main: Column | None, variants: list[Column]) -> str:
    """Trace accuracy in and out of distribution (and answer accuracy in distribution) of each variant, beside the
    main run of the same core and seed."""
    def cells(c: Column | None, kind: str, get, answer) -> list[str]:
        if c is None:
            return ["—"] * (3 + len(proto.ood_hops))
        return ([cell(c.over(kind, c.train_hops, get)), cell(c.over(kind, c.train_hops, answer)),
                 cell(c.over(kind, proto.ood_hops, get))]
                + [cell(c.over(kind, [h], get), short=True) for h in proto.ood_hops])

    cfg = (main or variants[0]).job.cfg
    rows = [[f"main run (lifeline={cfg.lifeline}, loop_pos={cfg.loop_pos}, supervision={cfg.supervision})"]
            + cells(main, "main", intact("trace_acc"), intact("answer_acc"))]
    rows += [[c.label] + cells(c, "ablation", trace, lambda v: v["answer_acc"]) for c in variants]
    return md_table(["variant", "in-distribution trace acc", "in-distribution answer acc", "OOD trace acc (all)",
                     *(f"{h} hops" for h in proto.ood_hops)], rows)


# ----------------------------------------------------------------------------------------------- provenance

def machine_text(m: dict) -> str:
    return (f"{m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device "
            f"{m['device']}" + (f" ({m['gpu']})" if m.get("gpu") else ""))


def column_name(c: Column) -> str:
    role = {"main": f"{c.label}", "no_loop": f"no loop, {c.label}", "base_alone": "base alone",
            "ablation": f"ablation {c.label} ({c.job.core})"}[c.job.role]
    return f"`{c.job.protocol}` {role}"


def provenance_table(protocols: dict[str, Protocol], commands: list[str]) -> str:
    """Per column: its settings, its parts (and the hop counts of its tables it lacks), when, where, with what code,
    by which command and on which weights it was measured."""
    rows = []
    for proto in protocols.values():
        for c in proto.columns():
            m = [p.measured for p in c.parts]
            dates = sorted(x["date"].replace("T", " ")[:16] for x in m)
            wanted = proto.train_hops + proto.ood_hops
            kinds = {p.kind for p in c.parts if p.hops is not None}
            missing = [h for h in wanted if not kinds <= set(c.hops.get(h, {}))]
            weights = sorted({x["weights"] for x in m if x["weights"]})
            rows.append([
                column_name(c), f"`--preset {c.job.preset}` `{' '.join(c.job.overrides)}`; n = {c.job.n} per hop",
                f"{len(c.parts)}" + (f"; not measured: hops {','.join(map(str, missing))}" if missing else ""),
                dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}",
                "; ".join(dict.fromkeys(machine_text(x["machine"]) for x in m)),
                "; ".join(dict.fromkeys(", ".join(f"{k} {v}" for k, v in x["versions"].items()) for x in m)),
                ", ".join(str(commands.index(cmd) + 1) for cmd in dict.fromkeys(x["command"] for x in m)),
                "—" if not weights else weights[0] if len(weights) == 1
                else f"{len(weights)} trainings: {', '.join(weights)}"])
    return md_table(["column", "settings", "parts", "measured", "machine", "versions", "command", "weights (sha256)"],
                    rows)


def stale_table(stale: list[Part], root: Path) -> str:
    rows = [[f"`{p.path.relative_to(root)}`", f"`{p.spec['protocol']}` {p.spec['role']} {p.spec['core']}"
             + (f" {p.spec['variant']}" if p.spec["role"] == "ablation" else ""),
             "—" if p.hops is None else str(p.hops), p.measured["date"].replace("T", " ")[:16], "; ".join(p.changed)]
            for p in stale]
    return md_table(["part", "job", "hops", "measured", "what no longer matches"], rows)


def identical_but_core(cores: list[Column]) -> bool:
    """Whether the main columns' configs are one config but for the core."""
    return len({dataclasses.replace(c.job.cfg, core="mamba2").digest(ignore=NOT_MEASURED) for c in cores}) == 1


def render_results(parts: list[Part], protocols: dict[str, Protocol], root: Path, plot_name: str) -> str:
    """RESULTS.md from the parts (`root`: the folder of RESULTS.md, the parts' paths are shown relative to it)."""
    stale = [p for p in parts if p.changed]
    commands = list(dict.fromkeys(p.measured["command"] for p in parts))
    out = [
        "# RLF headline results\n",
        f"Generated by `rlf bench headline` from the result parts committed in `{PARTS_FOLDER}/` (one JSON file per "
        "measured piece: a model's main measurement and loop-clock probe per held-out hop count, its memory and "
        "training figures, each baseline and ablation per hop count), not from run directories; do not edit by hand. "
        "`rlf bench headline --render` writes it again from the parts alone.\n",
        f"- parts: {len(parts) - len(stale)} current, {len(stale)} stale"
        + (" (not in the tables; listed under \"Stale parts\")" if stale else ""),
        "- commands that measured them: " + "; ".join(f"({i}) `{c}`" for i, c in enumerate(commands, 1)),
        "- rates are `rate [95% Wilson interval] (count/n)`; — : not measured, or only stale parts; when and where "
        "each column was measured: the table \"Measured\" below.\n",
    ]
    if any(p.spec["quick"] for p in parts):
        out.append("**--quick: a tiny random base and a few training steps; these numbers only check the tool.**\n")
    for p, proto in protocols.items():
        what = ("the seeds' protocol: statements in chain order" if p == "forward"
                else "genuine pointer chasing: statements shuffled, targets from the query, distractor chains")
        eval_sets = {h: {q.key["eval_set"] for c in proto.columns() for q in c.parts if q.hops == h}
                     for h in proto.train_hops + proto.ood_hops}
        ns = sorted({c.job.n for c in proto.columns()})
        out += [f"## Protocol `{p}` ({what}; `{' '.join(PROTOCOLS[p])}`)\n",
                f"Trained on hops {','.join(map(str, proto.train_hops))}; held-out chains per hop count: "
                f"{', '.join(map(str, ns))}"
                + (f"; the cores on identical data and hyperparameters: "
                   f"{'yes' if identical_but_core(proto.cores) else 'NO'}" if len(proto.cores) > 1 else "")
                + "; held-out sets identical across the models of this protocol: "
                + ("yes" if all(len(d) <= 1 for d in eval_sets.values()) else
                   f"NO (hops {','.join(str(h) for h, d in eval_sets.items() if len(d) > 1)})") + ".\n"]
        if proto.cores:
            out.append(headline_table(proto))
        if proto.cores or proto.base_alone or proto.no_loop:
            out += ["### Baselines: answer accuracy on the same prompts\n", baseline_table(proto)]
        if proto.cores:
            out += ["### Stability\n", stability_table(proto)]
        for c in proto.cores:
            hist = {str(h): v["main"]["halt_histogram"] for h, v in c.hops.items() if "main" in v}
            out += [f"#### First <HALT> loop per hop count, {c.label}\n", histogram_table(hist)]
        groups = dict.fromkeys((c.job.core, c.job.cfg.seed) for c in proto.ablations)
        for core, seed in groups:
            main = next((c for c in proto.cores if (c.job.core, c.job.cfg.seed) == (core, seed)), None)
            variants = [c for c in proto.ablations if (c.job.core, c.job.cfg.seed) == (core, seed)]
            out += [f"## Component ablations ({core} core, seed {seed}, `{p}` protocol)\n",
                    ablation_table(proto, main, variants)]
    if protocols:
        out += [f"## Accuracy per hop count\n\n![per-hop accuracy]({plot_name})\n",
                "## Measured: when, where and on what each column was measured\n",
                provenance_table(protocols, commands)]
    if stale:
        out += ["## Stale parts\n", "Measured under a key that no longer matches; none of them is in the tables.\n",
                stale_table(stale, root)]
    out += ["## Definitions\n", "".join(f"- **{k}**: {v}\n" for k, v in DEFINITIONS.items())]
    return "\n".join(out)
