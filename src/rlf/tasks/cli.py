"""`rlf data`: generate task files and check them against a tokenizer."""

from __future__ import annotations


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="generate task data (JSONL) or check a file")
    p.set_defaults(func=lambda args: 0)
