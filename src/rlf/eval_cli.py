"""`rlf eval`, `rlf probe`, `rlf demo`: argument parsing only; the work is in evaluate.py, probes.py, demo.py.

Kept free of heavy imports so that `rlf --help` and `rlf data ...` start fast.
"""

from __future__ import annotations

import argparse
import json

from rlf.errors import RLFError

DEFAULT_ABLATIONS = "zero,noise,shuffle"


def add_eval_parser(sub) -> None:
    """Add `rlf eval RUN ...` to the top-level subcommands."""
    p = sub.add_parser("eval", help="per-hop and OOD metrics of a trained run, with inference-time ablations")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", nargs="+", default=[], metavar="FILE", help="JSONL test files (one split each)")
    p.add_argument("--hops", default=None,
                   help="generate held-out sets at these hops, e.g. 1-10,16,32 (default without --data: the "
                        "training hops plus 6,8,10,12,16,24,32 beyond them)")
    p.add_argument("--n", type=int, default=1000, help="generated examples per hop count (default 1000)")
    p.add_argument("--ablate", default=DEFAULT_ABLATIONS,
                   help=f"comma-separated: zero, noise, shuffle, scale=S, offset=K, clamp=C (the loop clock), or none "
                        f"(default: {DEFAULT_ABLATIONS})")
    p.add_argument("--max-loops", type=int, default=None, help="loop limit (default: twice the target halt loop)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise/shuffle ablations")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print eval.json instead of the Markdown tables")
    from rlf.cli import add_nproc_argument

    add_nproc_argument(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate, write eval.json + eval.md into the run, print the tables (or the JSON)."""
    from rlf import distributed
    from rlf.evaluate import evaluate, render_markdown
    from rlf.train import load_run

    for flag, value in (("--max-loops", args.max_loops), ("--batch-size", args.batch_size), ("--n", args.n)):
        if value is not None and value <= 0:
            raise RLFError(f"{flag} {value}: must be a positive integer")
    run = load_run(args.run, device=args.device)
    result = evaluate(args.run, data_files=args.data, hops=args.hops, n=args.n, ablations=args.ablate,
                      max_loops=args.max_loops, batch_size=args.batch_size, seed=args.seed, run=run)
    if distributed.join().main:
        print(json.dumps(result, indent=2) if args.json else render_markdown(result))
    return 0


def add_probe_parser(sub) -> None:
    """Add `rlf probe RUN ...` to the top-level subcommands."""
    p = sub.add_parser("probe", help="FSM, gate partition, causal gate ablation and trajectory plots (PNG + JSON)")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", default=None, help="output folder (default: RUN/probes)")
    p.add_argument("--n", type=int, default=256, help="held-out chains for the FSM and causal ablation (default 256)")
    p.add_argument("--gate-threshold", type=float, default=0.1,
                   help="a gate dimension is amplified above 1+T, suppressed below 1-T, else neutral (default 0.1)")
    p.add_argument("--random-sets", type=int, default=5, help="random dimension sets per causal control (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    """Run every probe and print where the files are and the headline numbers."""
    from rlf.probes import probe_summary, run_probes
    from rlf.train import load_run

    if args.n <= 0 or args.random_sets <= 0 or args.gate_threshold < 0:
        raise RLFError("--n and --random-sets must be positive and --gate-threshold non-negative")
    run = load_run(args.run, device=args.device)
    results = run_probes(run, args.run, out=args.out, n=args.n, gate_threshold=args.gate_threshold,
                         random_sets=args.random_sets, seed=args.seed)
    print(probe_summary(results))
    return 0


def add_demo_parser(sub) -> None:
    """Add `rlf demo` to the top-level subcommands."""
    p = sub.add_parser("demo", help="the main job end to end on the embedded default: data, train, eval, ablate, "
                                    "probe, report")
    p.add_argument("--out", default=None, help="run directory (default: runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a tiny random base and a few steps: checks the pipeline")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo and print the headline table and the report's path."""
    from rlf.demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(report["headline"])
    print(f"\nreport: {report['path']}")
    return 0
