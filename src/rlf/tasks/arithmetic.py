"""`math`: arithmetic chains with intermediate values as loop targets.

`A = six. Q = five. B = A * Q. C = B - ten. What is C?` -> `six, thirty, twenty`.
k hops = k operations; targets = the start value, then the value after each operation (k + 1).
Only numbers that are one token are used: with SmolLM2 (which splits digits) that is zero to twenty
and the tens, written as words; with a tokenizer that has one-token digits, digits.
"""

from __future__ import annotations

import operator
from functools import lru_cache
from random import Random

from rlf.errors import RLFError
from rlf.tasks.sampling import Sample, check_count, check_pool
from rlf.tasks.vocab import Vocab

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@lru_cache(maxsize=64)
def step_table(vocab: Vocab, op: str) -> dict[int, list[tuple[int, int]]]:
    """For each writable value v: the (operand, result) pairs with `v op operand` writable and non-trivial."""
    numbers = vocab.numbers
    least = 2 if op == "*" else 1  # no `+ 0`, `- 0`, `* 0`, `* 1`
    return {
        v: [(b, OPERATORS[op](v, b)) for b in numbers if b >= least and OPERATORS[op](v, b) in numbers]
        for v in numbers
    }


@lru_cache(maxsize=64)
def _results(vocab: Vocab, op: str) -> dict[int, frozenset[int]]:
    return {v: frozenset(r for _, r in pairs) for v, pairs in step_table(vocab, op).items()}


def random_walk(rng: Random, vocab: Vocab, step_ops: list[str]) -> tuple[int, list[tuple[str, int, int]]] | None:
    """A start value and one (operator, operand, result) per step, step i using one of `step_ops[i]`,
    with every operand and result writable; None if no such walk exists."""
    feasible = [frozenset(vocab.numbers)]  # feasible[0] = values from which the remaining steps can finish
    for ops in reversed(step_ops):
        later = feasible[0]
        can_step = [v for v in vocab.numbers if any(not _results(vocab, op)[v].isdisjoint(later) for op in ops)]
        feasible.insert(0, frozenset(can_step))
    if not feasible[0]:
        return None
    start = value = rng.choice(sorted(feasible[0]))
    steps = []
    for ops, later in zip(step_ops, feasible[1:]):
        choices = [(op, b, r) for op in ops for b, r in step_table(vocab, op)[value] if r in later]
        op, operand, value = rng.choice(choices)
        steps.append((op, operand, value))
    return start, steps


def sample_math(rng: Random, hops: int, vocab: Vocab, distractors: int = 0) -> Sample:
    """A k-operation chain; each operand is a literal or a named constant defined earlier."""
    check_count("math", "distractors", distractors)
    check_pool("math", "variable names", 2 * hops + 1 + distractors, vocab.names, "use fewer hops or distractors")
    names = iter(rng.sample(vocab.names, 2 * hops + 1 + distractors))
    num = vocab.numbers
    walk = random_walk(rng, vocab, ["+-*"] * hops)
    if walk is None:
        raise RLFError(f"math: no {hops}-step walk stays within this tokenizer's one-token numbers")
    value, steps = walk
    var = next(names)
    statements = [f"{var} = {num[value]}."]
    targets = [num[value]]
    for op, operand, value in steps:
        operand_text = num[operand]
        if rng.random() < 0.5:  # a named constant, defined somewhere before its use
            operand_text = next(names)
            statements.insert(rng.randint(0, len(statements)), f"{operand_text} = {num[operand]}.")
        new_var = next(names)
        statements.append(f"{new_var} = {var} {op} {operand_text}.")
        var = new_var
        targets.append(num[value])
    for _ in range(distractors):  # unused constants
        statements.insert(rng.randint(0, len(statements)), f"{next(names)} = {num[rng.choice(sorted(num))]}.")
    return Sample(statements, f"What is {var}?", targets, {"distractors": distractors})
