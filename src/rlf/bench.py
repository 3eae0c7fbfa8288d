"""`rlf bench ...`: a group of benchmark subcommands.

To add one, write `add_<name>_parser(bench_sub)` in your module (it calls `bench_sub.add_parser(...)` and
sets `func`), and append it to `BENCH_PARSERS` below as "module:function" (imported only when the
parser is built, and kept light: the work is imported inside the handler).
"""

from __future__ import annotations

import argparse
import importlib
import json

from rlf.errors import RLFError

BENCH_PARSERS = [
    "rlf.bench:add_memory_parser",  # rlf bench memory RUN
    "rlf.bench:add_headline_parser",  # rlf bench headline
    "rlf.bench:add_babi_parser",  # rlf bench babi --data DIR
    "rlf.bench:add_sweep_parser",  # rlf bench sweep SWEEP.yaml
]


def add_bench_parser(sub) -> None:
    """Add `rlf bench SUBCOMMAND ...` to the top-level subcommands, with every entry of BENCH_PARSERS."""
    p = sub.add_parser("bench", help="benchmarks (memory per loop, the headline table, the bAbI table)")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for entry in BENCH_PARSERS:
        module, func = entry.split(":")
        getattr(importlib.import_module(module), func)(bench_sub)


def add_memory_parser(bench_sub) -> None:
    """`rlf bench memory RUN`: peak inference memory at 1, 2, 4, ..., 64 loops and its growth per loop."""
    p = bench_sub.add_parser("memory", help="peak inference memory vs loop count; must be flat (O(1) per loop)")
    p.add_argument("run", help="run directory")
    p.add_argument("--loops", default="1,2,4,8,16,32,64", help="loop counts (default 1,2,4,8,16,32,64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.set_defaults(func=cmd_memory)


def cmd_memory(args: argparse.Namespace) -> int:
    """Measure, write memory.json + memory.md into the run, print the table."""
    from rlf.bench_memory import bench_memory, render_memory
    from rlf.tasks import parse_int_list
    from rlf.train import load_run

    loops = parse_int_list(args.loops, "--loops", 1, 10_000)
    if args.batch_size <= 0:
        raise RLFError(f"--batch-size {args.batch_size}: must be positive")
    run = load_run(args.run, device=args.device)
    result = bench_memory(run, args.run, loops=loops, batch_size=args.batch_size)
    print(json.dumps(result, indent=2) if args.json else render_memory(result))
    return 0


def add_headline_parser(bench_sub) -> None:
    """`rlf bench headline`: Mamba2 vs Transformer on identical data, baselines, stability, ablations -> RESULTS.md."""
    p = bench_sub.add_parser(
        "headline", help="train both cores per protocol (+ baselines, ablations), measure, write docs/RESULTS.md",
        description="Train (or reuse, or resume) the Mamba2 and Transformer cores on identical data and "
                    "hyperparameters for each protocol, with the base-alone and no-loop baselines and the component "
                    "ablations; measure accuracy in and out of distribution, halting, the severed lifeline, "
                    "stability, memory and throughput. Every measured piece is a JSON part committed beside the report "
                    "(docs/results/), keyed by its config, held-out set, measurement code and seed: a part whose key "
                    "matches is reused without training. The Markdown report and a per-hop plot are rendered from "
                    "the parts alone. Rerunning continues an interrupted run.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every run (as `rlf train`), e.g. max_steps=2000 n_train=40000")
    p.add_argument("--out", default=None, help="folder of the runs (default runs/headline; "
                                               "--quick: runs/headline-quick)")
    p.add_argument("--protocols", default="forward,backward",
                   help="forward (the seeds': chain order) and/or backward (pointer chasing with distractors)")
    p.add_argument("--cores", default="mamba2,transformer", help="cores side by side (default mamba2,transformer)")
    p.add_argument("--ablations", default="on",
                   help="on (lifeline=scalar,lifeline=none,loop_pos=learned,loop_pos=learned max_loops=4,loop_pos=none,"
                        "supervision=final), off, "
                        "or a comma list of variants, each key=value overrides separated by spaces; trained on the "
                        "first core and protocol")
    p.add_argument("--n-ood", type=int, default=None,
                   help="held-out chains per hop count, in and out of distribution (default 1000; --quick 6)")
    p.add_argument("--ood-hops", default=None, help="OOD hop counts (default 6,8,10,16,32; --quick 3,4)")
    p.add_argument("--preset", default=None, help="training preset (default: default; --quick: tiny)")
    p.add_argument("--distractors", type=int, default=2,
                   help="distractor chains of the backward protocol (default 2: order=backward distractors=2)")
    p.add_argument("--docs", default=None, help="the Markdown report (default docs/RESULTS.md, with "
                                                "results_per_hop.png and the parts folder results/ beside it; "
                                                "--quick: OUT/RESULTS.md)")
    p.add_argument("--quick", action="store_true", help="tiny base, a few steps, small sets: checks the tool")
    p.add_argument("--render", action="store_true",
                   help="only write --docs and its plot from the committed result parts beside it (results/): no "
                        "training, no measuring; stale parts are listed, not used")
    p.set_defaults(func=cmd_headline)


def cmd_headline(args: argparse.Namespace) -> int:
    """Run the headline benchmark (or, with --render, only render its report) and print where its files are."""
    from rlf.headline import docs_path, render_headline, run_headline

    if args.render:
        if args.overrides:
            raise RLFError(f"--render measures nothing: drop the overrides {' '.join(args.overrides)}")
        res = render_headline(docs_path(args.out, args.docs, args.quick))
    else:
        res = run_headline(args.out, protocols=[s.strip() for s in args.protocols.split(",") if s.strip()],
                           cores=[s.strip() for s in args.cores.split(",") if s.strip()], ablations=args.ablations,
                           n=args.n_ood, ood_hops=args.ood_hops, preset=args.preset, overrides=args.overrides,
                           distractors=args.distractors, docs=args.docs, quick=args.quick)
    print(f"parts: {res['parts_dir']}\nreport: {res['docs']}\nplot: {res['plot']}")
    return 0


def add_babi_parser(bench_sub) -> None:
    """`rlf bench babi --data DIR`: train and test on each bAbI task, the table beside the papers' -> docs/babi.md."""
    p = bench_sub.add_parser(
        "babi", help="train and test on each bAbI-10k task, write docs/babi.md beside the published MemN2N/EntNet",
        description="For each task of --tasks: read its train and test files in --data with the bAbI reader (loop "
                    "targets from the supporting facts; a task it refuses is recorded with the reason), hold out the "
                    "last 10% of the training stories for validation, train (or reuse, or resume) a run in "
                    "--out/qaN and measure test error and trace accuracy on the test file. Every task's result is a "
                    "JSON part committed in --results, keyed by its config, its files, this code and the seed: a part "
                    "whose key matches is reused without training. --doc is rendered from the parts alone.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every task (as `rlf train`; not train_file/val_file), e.g. max_steps=500")
    p.add_argument("--data", required=True, help="the folder of the bAbI files, e.g. ../shared/data/babi/en-10k")
    p.add_argument("--tasks", default="1-20", help="task ids to measure, e.g. 1-3 or 2,19 (default 1-20)")
    p.add_argument("--preset", default="babi", help="training preset (default: babi, untuned)")
    p.add_argument("--results", default="docs/babi", help="the folder of the committed parts (default docs/babi)")
    p.add_argument("--doc", default="docs/babi.md", help="the Markdown table (default docs/babi.md)")
    p.add_argument("--out", default="runs/babi", help="the run directories, one per task (default runs/babi)")
    p.add_argument("--render", action="store_true",
                   help="only write --doc from the committed parts (checked against this command's config and "
                        "--data): no training")
    p.set_defaults(func=cmd_babi)


def cmd_babi(args: argparse.Namespace) -> int:
    """Measure the bAbI tasks not yet committed with their key, write the table, print where the files are."""
    from rlf.bench_babi import run_babi

    res = run_babi(args.data, args.tasks, preset=args.preset, overrides=args.overrides, results=args.results,
                   doc=args.doc, out=args.out, render=args.render)
    print(f"parts: {res['results']}\nreport: {res['doc']}")
    return 0


def add_sweep_parser(bench_sub) -> None:
    """`rlf bench sweep SWEEP.yaml`: train and measure each variant of a recipe into a committed experiment log."""
    p = bench_sub.add_parser("sweep", help="an experiment log: train each variant, measure on dev hop counts, "
                                           "write the JSON log and its Markdown table")
    p.add_argument("sweep", help="the sweep file (YAML: preset, overrides, dev_hops, n_dev, variants)")
    p.add_argument("--only", default=None, help="comma list of variant names to run (default: all not yet logged)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from rlf.sweep import run_sweep

    res = run_sweep(args.sweep, only=[s.strip() for s in args.only.split(",")] if args.only else None)
    print(f"log: {res['docs']}")
    return 0
