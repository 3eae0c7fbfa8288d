"""`rlf demo`: the main job end to end — data, encoding (cached), training, in-distribution and OOD evaluation,
inference ablations, memory per loop, probes — and a `report.md` with the tables and plots in the run directory.

All sizes live in `DEMO` below: change them there. `--quick` runs the same pipeline on the tiny random base
for a few steps (a check that every part works and writes its files; its accuracies mean nothing).
"""

from __future__ import annotations

import datetime
import logging
import platform
import re
import time
from pathlib import Path

import torch

from rlf.base import load_base
from rlf.bench_memory import memory_in_fresh_process, render_memory
from rlf.config import load_config
from rlf.evaluate import DEFAULT_ABLATIONS, evaluate, fmt_rate, md_table, render_markdown
from rlf.probes import probe_summary, run_probes
from rlf.train import load_run, train_or_reuse

log = logging.getLogger(__name__)

# The demo's sizes, in one place. `train` are `key=value` overrides of the preset.
DEMO = {
    "full": {
        "preset": "default",  # the embedded SmolLM2-135M (first 6 layers), Mamba2 core, forward chains of 1-5 hops
        "train": ["n_val=300", "max_steps=1500", "ckpt_every=100"],  # the preset's 20,000 chains, bf16, early stop
        "eval_hops": "1-5,6,8,10",  # in-distribution 1-5, OOD 6, 8, 10
        "eval_n": 100,  # held-out chains per hop count; the ablations run in distribution only
        "memory_loops": (1, 2, 4, 8, 16, 32, 64),
        "memory_batch": 16,
        "probe_n": 256,  # chains in the FSM picture
        "probe_ablation_n": 128,  # chains per condition of the causal gate ablation
        "gate_threshold": 0.1,
        "random_sets": 3,
        "out": "runs/demo",
    },
    "quick": {
        "preset": "tiny",  # a tiny random Llama base: seconds, not minutes
        "train": ["n_train=96", "n_val=16", "hops=1-2", "batch_size=16", "max_steps=6", "val_every=6",
                  "ckpt_every=6", "log_every=3"],
        "eval_hops": "1,2,4",
        "eval_n": 8,
        "memory_loops": (1, 2, 4, 8),
        "memory_batch": 8,
        "probe_n": 12,
        "probe_ablation_n": 12,
        "gate_threshold": 0.001,  # a few steps barely move the gate
        "random_sets": 2,
        "out": "runs/demo-quick",
    },
}


def headline(summary: dict, result: dict, memory: dict, probes: dict) -> list[list[str]]:
    """The demo's headline rows: accuracy in and out of distribution, halting, ablations, memory, probes."""
    rows = []
    for name, sp in result["splits"].items():
        conds = sp["conditions"]
        overall = conds["intact"]["overall"]
        rows.append([f"{name} trace accuracy (hops {','.join(map(str, sp['hops']))})", fmt_rate(overall["trace_acc"])])
        if name == "in-distribution":
            rows += [["in-distribution answer accuracy", fmt_rate(overall["answer_acc"])],
                     ["halt precision / recall", f"{fmt_rate(overall['halt_precision'])} / "
                                                 f"{fmt_rate(overall['halt_recall'])}"]]
            for cond, label in (("zero", "lifeline severed (gate = 0)"), ("noise", "noise as prompt"),
                                ("shuffle", "shuffled prompt")):
                if cond in conds:
                    m = conds[cond]["overall"]
                    rows.append([f"{label}: trace acc / loop agreement",
                                 f"{fmt_rate(m['trace_acc'])} / {fmt_rate(m['loop_agreement'])}"])
        else:
            rows += [[f"  {h} hops", fmt_rate(m["trace_acc"])] for h, m in conds["intact"]["by_hops"].items()]
    rows += [
        ["inference memory growth per loop", f"{memory['growth_mb_per_loop']:+.4f} MB/loop "
                                             f"({'flat' if memory['flat'] else 'GROWS'}; loops {memory['loops'][0]}-"
                                             f"{memory['loops'][-1]}, {memory['method']})"],
        ["FSM: variance explained by 2 PCs", f"{100 * probes['fsm']['variance_explained_2']:.1f}%"],
        ["training", f"{summary['steps']} steps, {summary['train_seconds']} s ({summary['stopped']}), "
                     f"{summary['examples_per_s']} examples/s, final val trace acc {summary['val_trace_acc']:.4f}"],
    ]
    return rows


def write_report(out: Path, cfg, summary: dict, result: dict, memory: dict, probes: dict, timings: dict,
                 quick: bool) -> tuple[Path, str]:
    """report.md in the run directory; returns its path and the headline table."""
    table = md_table(["metric", "value"], headline(summary, result, memory, probes))
    eval_md = re.sub(r"^(#+) ", r"#\1 ", render_markdown(result).split("\n", 1)[1], flags=re.M)  # one level down
    setup = {k: getattr(cfg, k) for k in ("base", "encoder_layers", "core", "lifeline", "loop_pos", "task", "order",
                                          "distractors", "hops", "n_train", "batch_size", "lr", "max_steps")}
    probe_dir = Path(probes["out"]).relative_to(out) if Path(probes["out"]).is_relative_to(out) else probes["out"]
    images = "".join(f"![{name}]({probe_dir}/{name}.png)\n\n" for name in ("fsm", "gate_partition", "gate_ablation",
                                                                          "trajectory")
                     if (Path(probes["out"]) / f"{name}.png").is_file())
    text = "\n".join([
        f"# RLF demo{' (--quick: tiny random base, a few steps; accuracies are meaningless)' if quick else ''}\n",
        f"`rlf demo{' --quick' if quick else ''} --out {out}` on {datetime.date.today()}, {platform.node()} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}).",
        "Stage wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".\n",
        "## Headline\n", table,
        "## Setup\n", md_table(["setting", "value"], [[k, str(v)] for k, v in setup.items()]),
        "## Training\n", md_table(["field", "value"], [[k, str(v)] for k, v in summary.items()]),
        "## Evaluation\n", eval_md,
        "## Memory per loop\n", render_memory(memory).split("\n", 1)[1],
        "## Probes\n", probe_summary(probes), "", images,
    ])
    (out / "report.md").write_text(text)
    return out / "report.md", table


def run_demo(out: str | Path | None = None, quick: bool = False) -> dict:
    """The whole demo; returns {"headline": Markdown table, "path": report.md}."""
    sizes = DEMO["quick" if quick else "full"]
    out = Path(out or sizes["out"])
    cfg = load_config(sizes["preset"], sizes["train"])
    timings, t0 = {}, time.perf_counter()
    base = load_base(cfg.base, cfg.encoder_layers, device=cfg.device)
    timings["load base"] = time.perf_counter() - t0

    def stage(name: str, fn):
        t = time.perf_counter()
        log.info("demo: %s", name)
        value = fn()
        timings[name] = time.perf_counter() - t
        return value

    summary = stage("data + encode + train", lambda: train_or_reuse(cfg, out, base))
    run = load_run(out, base=base)
    result = stage("evaluate + ablate", lambda: evaluate(out, hops=sizes["eval_hops"], n=sizes["eval_n"],
                                                         ablations=DEFAULT_ABLATIONS, run=run,
                                                         ablate_splits=["in-distribution"]))
    memory = stage("memory", lambda: memory_in_fresh_process(out, sizes["memory_loops"], sizes["memory_batch"],
                                                             cfg.device))
    probes = stage("probes", lambda: run_probes(run, out, n=sizes["probe_n"], gate_threshold=sizes["gate_threshold"],
                                                random_sets=sizes["random_sets"], ablation_n=sizes["probe_ablation_n"]))
    timings["total"] = time.perf_counter() - t0
    path, table = write_report(out, cfg, summary, result, memory, probes, timings, quick)
    return {"headline": table, "path": str(path), "timings": timings}
