"""`rlf data`: generate task files, read bAbI / Coconut files, check a file against a tokenizer, split."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

from rlf.errors import RLFError
from rlf.tasks.babi import read_babi
from rlf.tasks.coconut import read_coconut
from rlf.tasks.schema import CheckReport, check_jsonl, write_jsonl
from rlf.tasks.splits import split_examples
from rlf.tasks.suite import MAX_HOPS, TASKS, generate, parse_int_list, task_options

log = logging.getLogger(__name__)

DEFAULT_BASE = "smollm2-135m"
BASE_HELP = f"base whose tokenizer the targets must be one token for (default: {DEFAULT_BASE})"
DEFAULT_HOPS = {"graph": "3-6"}  # every other task: 1-5
OPTION_HELP = {
    "order": "forward (statements in chain order, targets from the head) "
    "or backward (shuffled, targets from the query)",
    "distractors": "number of unrelated chains / facts / concepts mixed in; a range such as 2-6 draws it per example",
    "factual": "state the prior property instead of a counterfactual one (a control)",
    "words": "vocab (one-token concept words from the tokenizer) or prosqa (invented multi-token words in ProsQA's "
    "style, its people and sentence forms: 'Is Tom a lempus or scrompus?')",
    "word_tokens": "words=prosqa: the longest concept word in base tokens (the run's target_tokens; at least 2)",
}
TARGET_TOKENS_HELP = "the longest target in base tokens (the run's target_tokens; default 1: one token per loop)"


def add_data_parser(sub) -> None:
    """Add `rlf data ...` to the top-level subcommands."""
    data = sub.add_parser("data", help="generate task data (JSONL), read bAbI/Coconut files, check or split a file")
    tasks = data.add_subparsers(dest="data_command", required=True, metavar="TASK")
    for task, sampler in TASKS.items():
        p = tasks.add_parser(task, help=(sampler.__doc__ or "").strip().splitlines()[0])
        _add_generate_args(p, task)
        p.set_defaults(func=_generate)

    p = tasks.add_parser("babi", help="read bAbI QA text files into the common format")
    p.add_argument("path", help="a bAbI directory (e.g. .../babi/en-10k) or one qaN_*.txt file")
    p.add_argument("--task", default="1", help="bAbI task numbers, e.g. 1-3 or 2,19 (default: 1)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument(
        "--rename", action="append", default=[], metavar="OLD=NEW",
        help="replace a word everywhere, e.g. hallway=corridor (hallway is two SmolLM2 tokens); repeatable",
    )  # fmt: skip
    p.add_argument("--target-tokens", type=int, default=1, metavar="K", help=TARGET_TOKENS_HELP)
    _add_reader_args(p)
    p.set_defaults(func=_babi)

    p = tasks.add_parser("coconut", help="read a Coconut-style JSON file (question, answer, steps, graph fields)")
    p.add_argument("path", help="the JSON file (an array of items)")
    p.add_argument("--task", default="coconut", help="the task name to give the examples (default: coconut)")
    p.add_argument("--target-tokens", type=int, default=1, metavar="K", help=TARGET_TOKENS_HELP + "; ProsQA needs 4")
    _add_reader_args(p)
    p.set_defaults(func=_coconut)

    p = tasks.add_parser("check", help="validate JSONL files against a base tokenizer; exit 1 if any line is invalid")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--base", default=DEFAULT_BASE, help=BASE_HELP)
    p.add_argument("--target-tokens", type=int, default=1, metavar="K", help=TARGET_TOKENS_HELP)
    p.set_defaults(func=_check)

    p = tasks.add_parser("split", help="split a JSONL file into train/val/test (and ood) files, no prompt shared")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for train/val/test/ood.jsonl")
    p.add_argument("--val", type=float, default=0.1, help="fraction of prompts per hop count for val (default: 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="fraction of prompts per hop count for test (default: 0.1)")
    p.add_argument("--ood-hops", default="", help="hop counts that go to ood.jsonl instead, e.g. 6,8,10-12")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_split)


def _add_generate_args(p: argparse.ArgumentParser, task: str) -> None:
    hops = DEFAULT_HOPS.get(task, "1-5")
    p.add_argument("--hops", default=hops, help=f"hop counts, e.g. 1-5,8 (default: {hops})")
    p.add_argument("--n", type=int, default=1000, help="number of examples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed and options, same bytes (default: 0)")
    p.add_argument("--base", default=DEFAULT_BASE, help=BASE_HELP)
    p.add_argument("--adversarial", type=int, default=0, metavar="N", help="noise sentences per prompt (default: 0)")
    p.add_argument("--uniform-hops", action="store_true", help="draw hop counts at random instead of balancing them")
    p.add_argument("--allow-duplicates", action="store_true", help="allow the same prompt twice")
    for name, default in task_options(task).items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{OPTION_HELP.get(name, name)} (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=help_text)
        else:
            kind = str if name == "distractors" else type(default)  # a count, or a range drawn per example
            p.add_argument(flag, type=kind, default=default, help=help_text)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the JSONL file to write")


def _add_reader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=DEFAULT_BASE, help=BASE_HELP)
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid items instead of failing (needs --reject)")
    p.add_argument("--reject", metavar="FILE", help="where --skip-invalid writes the skipped items (JSONL)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the JSONL file to write")


def _tokenizer(spec: str):
    from rlf.base import load_tokenizer  # imported here: it pulls in torch

    return load_tokenizer(spec)


def _generate(args: argparse.Namespace) -> int:
    task = args.data_command
    hops = parse_int_list(args.hops, "--hops", 1, MAX_HOPS)
    if args.n < 1:
        raise RLFError(f"--n {args.n}: the number of examples must be at least 1")
    if args.adversarial < 0:
        raise RLFError(f"--adversarial {args.adversarial}: must be 0 or more")
    _check_output(args.output)
    options = {name: getattr(args, name) for name in task_options(task)}
    tokenizer = _tokenizer(args.base)
    start = time.perf_counter()
    examples = generate(
        task, args.n, hops, args.seed, tokenizer, balanced=not args.uniform_hops,
        adversarial=args.adversarial, unique=not args.allow_duplicates, **options,
    )  # fmt: skip
    write_jsonl(examples, args.output)
    seconds = time.perf_counter() - start
    log.info("wrote %d %s examples (hops %s) to %s in %.1f s", len(examples), task, args.hops, args.output, seconds)
    return 0


def _babi(args: argparse.Namespace) -> int:
    tasks = parse_int_list(args.task, "--task", 1, 20)
    rename = {}
    for item in args.rename:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise RLFError(f"--rename {item!r}: write OLD=NEW, e.g. hallway=corridor")
        rename[old] = new
    _check_target_tokens(args.target_tokens)
    _check_reader_args(args)
    tokenizer = _tokenizer(args.base)
    examples = []
    for task in tasks:
        reject = _reject_for(args.reject, task, len(tasks))
        with _hint_long_targets("rename multi-token words (--rename hallway=corridor), allow longer targets "
                                "(--target-tokens K, the run's target_tokens) or skip them (--skip-invalid --reject "
                                "FILE)"):
            examples += read_babi(
                args.path, task, args.split, tokenizer,
                skip_invalid=args.skip_invalid, reject_path=reject, rename=rename, max_tokens=args.target_tokens,
            )  # fmt: skip
    write_jsonl(examples, args.output)
    log.info("wrote %d bAbI examples (tasks %s, %s) to %s", len(examples), args.task, args.split, args.output)
    return 0


def _coconut(args: argparse.Namespace) -> int:
    _check_target_tokens(args.target_tokens)
    _check_reader_args(args)
    tokenizer = _tokenizer(args.base)
    with _hint_long_targets("allow longer targets with --target-tokens K (the run's target_tokens) "
                            "or skip them (--skip-invalid --reject FILE)"):
        examples = read_coconut(
            args.path, tokenizer, task=args.task, skip_invalid=args.skip_invalid, reject_path=args.reject,
            max_tokens=args.target_tokens,
        )  # fmt: skip
    write_jsonl(examples, args.output)
    log.info("wrote %d examples from %s to %s", len(examples), args.path, args.output)
    return 0


def _check(args: argparse.Namespace) -> int:
    _check_target_tokens(args.target_tokens)
    tokenizer = _tokenizer(args.base)
    invalid = 0
    for file in args.files:
        report = check_jsonl(file, tokenizer, args.target_tokens)
        print(_report(report, args.base))
        invalid += len({e.line for e in report.errors}) + (report.lines == 0)
    return 1 if invalid else 0


def _split(args: argparse.Namespace) -> int:
    from rlf.tasks.schema import read_jsonl

    ood = parse_int_list(args.ood_hops, "--ood-hops", 0, MAX_HOPS) if args.ood_hops else []
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise RLFError(f"-o {out}: exists and is not a directory")
    splits = split_examples(read_jsonl(args.file), args.val, args.test, args.seed, ood)
    out.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        write_jsonl(examples, out / f"{name}.jsonl")
        print(f"{out / f'{name}.jsonl'}: {len(examples)} examples")
    return 0


def _report(report: CheckReport, base: str) -> str:
    """Counts per task and hop count, then every invalid line."""
    bad = len({e.line for e in report.errors})
    lines = [f"{report.path}: {report.lines} lines, {len(report.examples)} valid, {bad} invalid (tokenizer of {base})"]
    if report.lines == 0:
        lines.append("  the file is empty")
    counts = report.counts()
    if counts:
        width = max(len("task"), *(len(task) for task, _ in counts))
        lines.append(f"  {'task':<{width}}  {'hops':>4}  {'examples':>8}")
        lines += [f"  {task:<{width}}  {hops:>4}  {n:>8}" for (task, hops), n in sorted(counts.items())]
    lines += [f"  {e}" for e in report.errors]
    return "\n".join(lines)


def _check_output(path: str) -> None:
    parent = Path(path).parent
    if not parent.is_dir():
        raise RLFError(f"-o {path}: the directory {parent} does not exist")
    if Path(path).is_dir():
        raise RLFError(f"-o {path}: is a directory; give a file name")


@contextlib.contextmanager
def _hint_long_targets(hint: str):
    """A reader's refusal of targets longer than K tokens gets `hint` (what the command offers) appended."""
    try:
        yield
    except RLFError as e:
        if "tokens with a leading space" not in str(e):
            raise
        raise RLFError(f"{e}\nhint: {hint}") from None


def _check_target_tokens(k: int) -> None:
    if k < 1:
        raise RLFError(f"--target-tokens {k}: must be 1 or more")


def _check_reader_args(args: argparse.Namespace) -> None:
    if args.skip_invalid and not args.reject:
        raise RLFError("--skip-invalid needs --reject FILE, where the skipped items are written")
    if args.reject and not args.skip_invalid:
        raise RLFError("--reject is only used with --skip-invalid")
    _check_output(args.output)


def _reject_for(reject: str | None, task: int, n_tasks: int) -> str | None:
    """One reject file per bAbI task when several are read (`rej.jsonl` -> `rej.qa2.jsonl`)."""
    if reject is None or n_tasks == 1:
        return reject
    path = Path(reject)
    return str(path.with_name(f"{path.stem}.qa{task}{path.suffix}"))
