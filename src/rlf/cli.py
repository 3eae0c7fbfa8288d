"""The `rlf` command: thin argument parsing over the library functions."""

from __future__ import annotations

import argparse
import logging
import sys

from rlf.errors import RLFError


def build_parser() -> argparse.ArgumentParser:
    from rlf.tasks.cli import add_data_parser

    parser = argparse.ArgumentParser(prog="rlf", description="Recursive Latent Forcing")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args) or 0
    except RLFError as e:
        print(f"rlf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
