"""The `rlf` command: thin argument parsing over the library functions."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rlf.errors import RLFError

DISTRIBUTED = ("train", "eval", "encode")  # the commands that run as several processes (torchrun, --nproc)


def add_nproc_argument(p: argparse.ArgumentParser) -> None:
    """`--nproc N`: run the command as N processes on this machine (README: Several GPUs / machines)."""
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run as N processes on this machine (torchrun --standalone, one per GPU, or CPU cores / N "
                        "threads each); under torchrun, N must be the number it started")


def build_parser() -> argparse.ArgumentParser:
    from rlf.bench import add_bench_parser
    from rlf.eval_cli import add_demo_parser, add_eval_parser, add_probe_parser
    from rlf.export import add_export_parser
    from rlf.tasks.cli import add_data_parser

    parser = argparse.ArgumentParser(prog="rlf", description="Recursive Latent Forcing")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_parser(sub)
    add_eval_parser(sub)
    add_probe_parser(sub)
    add_demo_parser(sub)
    add_bench_parser(sub)
    add_export_parser(sub)

    p = sub.add_parser("encode", help="encode a JSONL file of prompts with the frozen base into the cache")
    p.add_argument("file", help="JSONL with a `prompt` field per line")
    p.add_argument("--base", default="smollm2-135m", help="base spec (default: the embedded smollm2-135m)")
    p.add_argument("--encoder-layers", type=int, default=None, help="use only the first N base layers")
    p.add_argument("--template", default="{prompt}\nAnswer:")
    p.add_argument("--storage", default="float16", choices=["float16", "bfloat16"])
    p.add_argument("--cache-dir", default="cache/encodings")
    p.add_argument("--device", default="auto")
    add_nproc_argument(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("train", help="train an RLF model into a run directory")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. core=transformer lr=1e-3")
    p.add_argument("--preset", default=None, help="preset name (default, default-attn, tiny, ...; default: default)")
    p.add_argument("--config", default=None, help="a YAML config file instead of a preset")
    p.add_argument("--out", default=None, help="run directory (new)")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--force", action="store_true", help="resume even if the config or data changed")
    add_nproc_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("solve", help="print the loop-by-loop trace of a trained run on prompts")
    p.add_argument("run", help="run directory")
    p.add_argument("prompts", nargs="+", help="prompt text(s), without the template")
    p.add_argument("--max-loops", type=int, default=None, help="loop limit (default 64); every prompt stops at <HALT>")
    p.add_argument("--gate-scale", type=float, default=1.0, help="scale the lifeline gate (0 severs it)")
    p.add_argument("--loop-clamp", type=int, default=None, metavar="C",
                   help="hold the loop position at loop C (0-based) from then on: on the presets, C=3 runs chains "
                        "past the trained lengths (README: The loop clock)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_solve)
    return parser


def _read_prompts(path: str) -> list[str]:
    import json

    prompts = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise RLFError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, 1):
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise RLFError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not d["prompt"].strip():
                raise RLFError(f"{path}:{n}: field `prompt` missing, not a string, or empty")
            prompts.append(d["prompt"])
    return prompts


def cmd_encode(args) -> int:
    from rlf import distributed
    from rlf.base import load_base
    from rlf.cache import encode_cached

    prompts = _read_prompts(args.file)
    base = load_base(args.base, args.encoder_layers, device=args.device)
    enc = encode_cached(base, prompts, args.cache_dir, args.template, args.storage)
    if distributed.join().main:
        print(f"{len(enc)} prompts, {int(enc.lengths.sum())} tokens, d={enc.d}: {enc.path}")
    return 0


def cmd_train(args) -> int:
    import json
    from pathlib import Path

    from rlf import distributed
    from rlf.config import TrainConfig, load_config, read_run_config
    from rlf.train import train

    if args.resume:
        given = [f"--{n}" for n in ("preset", "config", "out") if getattr(args, n) is not None]
        if given:
            raise RLFError(f"--resume continues a run with its own config.json; drop {', '.join(given)} "
                           "(give changed settings as key=value, with --force)")
        if not Path(args.resume, "config.json").is_file():
            raise RLFError(f"--resume {args.resume}: not a run directory (no config.json)")
        saved = read_run_config(args.resume)
        cfg = load_config(None, args.overrides)  # validates the overrides
        cfg = TrainConfig(**{**saved.to_dict(), **{k: getattr(cfg, k) for k in _override_keys(args)}})
        summary = train(cfg, args.resume, resume=True, force=args.force)
    else:
        if not args.out:
            raise RLFError("--out RUN is required for a new run (or --resume RUN to continue one)")
        if args.force:
            raise RLFError("--force only applies to --resume")
        if args.preset is not None and args.config is not None:
            raise RLFError("give --preset or --config, not both")
        cfg = load_config(args.preset or "default", args.overrides, args.config)
        summary = train(cfg, args.out)
    if distributed.join().main:
        print(json.dumps(summary, indent=2))
    return 0


def _override_keys(args) -> list[str]:
    return [o.split("=", 1)[0].strip().replace("-", "_") for o in args.overrides]


def cmd_solve(args) -> int:
    import json

    from rlf.train import load_run

    if args.max_loops is not None and args.max_loops < 1:
        raise RLFError(f"--max-loops {args.max_loops}: must be 1 or more")
    if args.loop_clamp is not None and args.loop_clamp < 0:
        raise RLFError(f"--loop-clamp {args.loop_clamp}: must be 0 or more")
    run = load_run(args.run)
    traces = run.solve(args.prompts, args.max_loops, gate_scale=args.gate_scale, loop_clamp=args.loop_clamp)
    if args.json:
        print(json.dumps(traces, indent=2))
        return 0
    words = run.config.target_tokens > 1  # each loop's whole word, p = the product of its slots' probabilities
    for prompt, trace in zip(args.prompts, traces):
        print(prompt)
        width = max([12, *(len(t["token"]) for t in trace)]) if words else 12
        print(f"{'loop':>4}  {'word' if words else 'token':<{width}} {'p':>6}  {'p(HALT)':>7}")
        for t in trace:
            print(f"{t['loop']:>4}  {t['token']:<{width}} {t['p']:>6.3f}  {t['p_halt']:>7.3f}")
        print()
    return 0


def run_command(args, argv: list[str]) -> int:
    """The command, in this process or (--nproc N) as N processes; under torchrun, in its process group."""
    if "WORLD_SIZE" not in os.environ and getattr(args, "nproc", None) is None:
        return args.func(args) or 0
    from rlf import distributed

    launched = distributed.launched_size()
    if args.command not in DISTRIBUTED:
        if launched > 1:
            raise RLFError(f"rlf {args.command} runs in one process; the commands that run under torchrun are "
                           f"{', '.join(DISTRIBUTED)}")
        return args.func(args) or 0
    nproc = launched if args.nproc is None else args.nproc
    if nproc < 1 or launched > 1 and nproc != launched:
        raise RLFError(f"--nproc {nproc}: " + (f"torchrun started {launched} processes; leave --nproc out or give "
                                               f"{launched}" if launched > 1 else "must be 1 or more"))
    if nproc > launched:
        return distributed.launch(nproc, argv)
    try:
        return args.func(args) or 0
    finally:
        distributed.leave()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # torchrun's: rank 0 alone logs progress, and errors name their rank
    level = logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    where = f"rlf {args.command}" + (f" (rank {rank})" if rank else "")
    try:
        return run_command(args, argv)
    except RLFError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = f"; continue with `rlf train --resume {args.resume or args.out}`" if args.command == "train" else ""
        print(f"{where}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
