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
]


def add_bench_parser(sub) -> None:
    """Add `rlf bench SUBCOMMAND ...` to the top-level subcommands, with every entry of BENCH_PARSERS."""
    p = sub.add_parser("bench", help="benchmarks (memory per loop, ...)")
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
