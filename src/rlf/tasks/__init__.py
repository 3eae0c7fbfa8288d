"""Tasks: the JSONL example format, its reader/writer, the task generators, readers and splits.

    from rlf.tasks import generate, parse_hops, read_jsonl, write_jsonl
    examples = generate("chain", 1000, parse_hops("1-5"), seed=0, tokenizer=tok, order="backward")
"""

from rlf.tasks.adversarial import make_adversarial
from rlf.tasks.babi import read_babi
from rlf.tasks.coconut import read_coconut
from rlf.tasks.schema import (
    CheckReport,
    Example,
    LineError,
    check_jsonl,
    read_jsonl,
    target_token_id,
    target_token_ids,
    write_jsonl,
)
from rlf.tasks.splits import DEFAULT_OOD_HOPS, default_ood_hops, make_splits, split_examples
from rlf.tasks.suite import TASKS, generate, parse_hops, parse_int_list, task_options
from rlf.tasks.vocab import Vocab, build_vocab

__all__ = [
    "CheckReport",
    "DEFAULT_OOD_HOPS",
    "Example",
    "LineError",
    "TASKS",
    "Vocab",
    "build_vocab",
    "check_jsonl",
    "default_ood_hops",
    "generate",
    "make_adversarial",
    "make_splits",
    "parse_hops",
    "parse_int_list",
    "read_babi",
    "read_coconut",
    "read_jsonl",
    "split_examples",
    "target_token_id",
    "target_token_ids",
    "task_options",
    "write_jsonl",
]
