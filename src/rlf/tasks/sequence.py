"""`sequence`: continue an arithmetic or geometric sequence whose rule is shown on the first terms.

`K1 = two. K2 = K1 + three. K3 = K2 + three. The pattern continues. What is K5?` -> `eight, eleven, fourteen`
(k hops = k terms past the last shown one; targets = the last shown term's value, then each next
term: k + 1). Every term must be a one-token number, which bounds the hops for tokenizers that
split digits (SmolLM2: zero to twenty and the tens, so at most 18 hops).
"""

from __future__ import annotations

from functools import lru_cache
from random import Random

from rlf.errors import RLFError
from rlf.tasks.arithmetic import OPERATORS
from rlf.tasks.sampling import Sample
from rlf.tasks.vocab import Vocab

SHOWN = 3  # terms written out in the prompt; the rule appears twice, so it is unambiguous
STEPS = [("+", d) for d in range(1, 11)] + [("-", d) for d in range(1, 11)] + [("*", 2), ("*", 3)]
STEPS += [("+", d) for d in (20, 30, 100)] + [("-", d) for d in (20, 30, 100)]


@lru_cache(maxsize=256)
def sequences(vocab: Vocab, hops: int) -> list[tuple[int, str, int]]:
    """All (start, operator, step) whose `SHOWN + hops` terms are distinct one-token numbers."""
    out = []
    for start in sorted(vocab.numbers):
        for op, step in STEPS:
            value = start
            for _ in range(SHOWN + hops - 1):
                value, previous = OPERATORS[op](value, step), value
                if value not in vocab.numbers or value == previous:  # `0 * 2` would repeat forever
                    break
            else:
                out.append((start, op, step))
    return out


def max_sequence_hops(vocab: Vocab) -> int:
    """The largest hop count for which some sequence fits in the tokenizer's one-token numbers."""
    hops = 0
    while sequences(vocab, hops + 1):
        hops += 1
    return hops


def sample_sequence(rng: Random, hops: int, vocab: Vocab) -> Sample:
    """One sequence: the first SHOWN terms with their rule, then the term `hops` further on."""
    candidates = sequences(vocab, hops)
    if not candidates:
        raise RLFError(
            f"sequence: no {SHOWN + hops}-term sequence fits in this tokenizer's one-token numbers; "
            f"the most hops it allows is {max_sequence_hops(vocab)}"
        )
    start, op, step = rng.choice(candidates)
    stem = rng.choice(vocab.names)
    num = vocab.numbers
    terms = [start]
    for _ in range(SHOWN + hops - 1):
        terms.append(OPERATORS[op](terms[-1], step))
    statements = [f"{stem}1 = {num[start]}."]
    statements += [f"{stem}{i} = {stem}{i - 1} {op} {num[step]}." for i in range(2, SHOWN + 1)]
    statements.append("The pattern continues.")
    return Sample(
        statements,
        f"What is {stem}{SHOWN + hops}?",
        [num[t] for t in terms[SHOWN - 1 :]],
        {"rule": f"{op}{step}"},
    )
