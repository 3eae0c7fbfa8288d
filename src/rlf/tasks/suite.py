"""The task suite: one entry, `generate(task, n, hops, seed, tokenizer, **options)`, and hop parsing."""

from __future__ import annotations

import inspect
from random import Random
from typing import Callable, Iterable

from rlf.errors import RLFError
from rlf.tasks.adversarial import add_noise
from rlf.tasks.arithmetic import sample_math
from rlf.tasks.bugfix import sample_bugfix
from rlf.tasks.chain import sample_chain
from rlf.tasks.graph import sample_graph
from rlf.tasks.override import sample_override
from rlf.tasks.sampling import Sample, check_count
from rlf.tasks.schema import Example
from rlf.tasks.sequence import sample_sequence
from rlf.tasks.vocab import build_vocab

# task name -> sampler(rng, hops, vocab, **options) -> Sample
TASKS: dict[str, Callable[..., Sample]] = {
    "chain": sample_chain,
    "math": sample_math,
    "sequence": sample_sequence,
    "bugfix": sample_bugfix,
    "override": sample_override,
    "graph": sample_graph,
}
READ_FROM_FILES = {"babi": "rlf.tasks.read_babi", "coconut": "rlf.tasks.read_coconut"}
MAX_HOPS = 1000


def parse_int_list(text: str, what: str, low: int, high: int) -> list[int]:
    """Parse `1-5,8` into [1, 2, 3, 4, 5, 8] (sorted, unique), each in [low, high]; else an RLFError."""
    usage = f"{what} {text!r}: write numbers and ranges like 1-5,8"
    values: set[int] = set()
    for item in str(text).split(","):
        item = item.strip()
        bounds = item.split("-")
        if not item or len(bounds) > 2 or not all((b.strip().isascii() and b.strip().isdigit()) for b in bounds):
            raise RLFError(f"{usage} ({item!r} is not a number or a range)")
        first, last = int(bounds[0]), int(bounds[-1])
        if first > last:
            raise RLFError(f"{usage} (range {item!r} goes down: {first} > {last})")
        if first < low or last > high:
            raise RLFError(f"{usage} ({item!r} is outside {low}-{high})")
        values.update(range(first, last + 1))
    return sorted(values)


def parse_hops(text: str) -> list[int]:
    """Parse a hop list such as `1-5,8` (each hop between 1 and 1000)."""
    return parse_int_list(text, "hops", 1, MAX_HOPS)


def task_options(task: str) -> dict[str, object]:
    """The options a generated task takes, with their defaults."""
    sampler = _sampler(task)
    return {name: p.default for name, p in list(inspect.signature(sampler).parameters.items())[3:]}


def generate(
    task: str,
    n: int,
    hops: list[int] | str,
    seed: int,
    tokenizer,
    *,
    balanced: bool = True,
    adversarial: int = 0,
    unique: bool = True,
    exclude_prompts: Iterable[str] = (),
    id_prefix: str | None = None,
    **options,
) -> list[Example]:
    """Generate `n` examples of `task` at the given hops, deterministically from `seed`.

    `balanced`: every hop equally often (else drawn uniformly); `adversarial`: noise sentences per
    prompt; `unique`: no prompt twice (nor any of `exclude_prompts`); `options`: the task's own. A task's
    `distractors` may be a range such as `"2-6"`: each example draws its count uniformly from it.
    """
    sampler = _sampler(task)
    allowed = task_options(task)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise RLFError(f"{task}: unknown option {', '.join(unknown)}; its options are: {', '.join(allowed) or 'none'}")
    check_count(task, "n", n, low=1)
    check_count(task, "adversarial", adversarial)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RLFError(f"{task}: seed must be an integer, not {seed!r}")
    hops = parse_hops(hops) if isinstance(hops, str) else list(hops)
    if not hops or not all(isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_HOPS for h in hops):
        raise RLFError(f"{task}: hops must be a non-empty list of integers between 1 and {MAX_HOPS}, not {hops!r}")
    hops = sorted(set(hops))
    counts = None  # a distractor range, drawn per example; one count is the integer option (the same bytes)
    if isinstance(options.get("distractors"), str):
        counts = parse_int_list(options["distractors"], f"{task}: distractors", 0, MAX_HOPS)
        if len(counts) == 1:
            options, counts = {**options, "distractors": counts[0]}, None

    vocab = build_vocab(tokenizer)
    rng = Random(seed)
    if balanced:
        schedule = [hops[i % len(hops)] for i in range(n)]
        rng.shuffle(schedule)
    else:
        schedule = [rng.choice(hops) for _ in range(n)]
    seen = set(exclude_prompts)
    retries_left = 10 * n + 1000
    prefix = id_prefix or task
    out = []
    for i, k in enumerate(schedule):
        while True:
            drawn = {} if counts is None else {"distractors": rng.choice(counts)}
            sample = sampler(rng, k, vocab, **{**options, **drawn})
            prompt = sample.prompt
            if adversarial:
                prompt = add_noise(prompt, rng, vocab, adversarial)
            if not unique or prompt not in seen:
                break
            retries_left -= 1
            if retries_left < 0:
                raise RLFError(
                    f"{task}: found only {len(out)} distinct prompts of the {n} asked for (hops {hops}); "
                    "ask for fewer examples, more hops or distractors, or allow duplicates"
                )
        seen.add(prompt)
        meta = {**sample.meta, "adversarial": adversarial}
        targets = sample.targets
        out.append(Example(f"{prefix}-h{k}-{i:06d}", task, prompt, targets, targets[-1], k, meta))
    return out


def _sampler(task: str) -> Callable[..., Sample]:
    if task in READ_FROM_FILES:
        raise RLFError(f"task {task!r} is read from files, not generated: use {READ_FROM_FILES[task]}")
    if task not in TASKS:
        raise RLFError(f"unknown task {task!r}; generated tasks are: {', '.join(TASKS)}")
    return TASKS[task]
