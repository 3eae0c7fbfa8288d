"""`chain`: variable-pointer chains. k hops = a value assignment then k variable-to-variable links.

`order="forward"` (the seeds' protocol): statements in chain order, targets from the chain head,
`A = moon. B = A. C = B. What is C?` -> `A, B, moon`. `order="backward"` (genuine pointer chasing):
statements shuffled, targets dereference from the queried variable -> `B, A, moon`. `distractors=N`
interleaves N unrelated chains; every variable is assigned exactly once.
"""

from __future__ import annotations

import re
from random import Random

from rlf.errors import RLFError
from rlf.tasks.sampling import Sample, check_count, check_pool
from rlf.tasks.vocab import Vocab

ORDERS = ("forward", "backward")


def sample_chain(
    rng: Random, hops: int, vocab: Vocab, order: str = "backward", distractors: int = 0, names: int = 0, values: int = 0
) -> Sample:
    """One k-hop chain (k + 1 targets, the last is the value) with `distractors` unrelated chains.

    `names`/`values` > 0 restrict the variable names / values to the first N of their pools (a small
    vocabulary is learnable by tiny models and lets one measure the effect of vocabulary size).
    """
    if order not in ORDERS:
        raise RLFError(f"chain: option order={order!r} must be one of {', '.join(ORDERS)}")
    check_count("chain", "distractors", distractors)
    check_count("chain", "names", names)
    check_count("chain", "values", values)
    name_pool = vocab.names[:names] if names else vocab.names
    value_pool = vocab.words[:values] if values else vocab.words
    lengths = [hops] + [rng.randint(1, hops) for _ in range(distractors)]
    n_names = sum(length + 1 for length in lengths)
    check_pool("chain", "variable names", n_names, name_pool, "use fewer hops or distractors, or more names")
    check_pool("chain", "values", len(lengths), value_pool, "use fewer distractors or more values")
    names = rng.sample(name_pool, n_names)
    values = rng.sample(value_pool, len(lengths))

    chains, start = [], 0  # chains[c] = that chain's statements in chain order
    for length, value in zip(lengths, values):
        var = names[start : start + length + 1]
        chains.append([f"{var[0]} = {value}."] + [f"{var[i]} = {var[i - 1]}." for i in range(1, length + 1)])
        start += length + 1
    main = names[: hops + 1]

    if order == "forward":  # a random interleaving that keeps each chain's own order
        slots = [c for c, statements in enumerate(chains) for _ in statements]
        rng.shuffle(slots)
        cursor = [0] * len(chains)
        statements = []
        for c in slots:
            statements.append(chains[c][cursor[c]])
            cursor[c] += 1
        pointers = main[:-1]
    else:
        statements = [s for chain in chains for s in chain]
        rng.shuffle(statements)
        pointers = main[-2::-1]
    return Sample(
        statements=statements,
        question=f"What is {main[-1]}?",
        targets=[*pointers, values[0]],
        meta={"order": order, "distractors": distractors},
    )


_STATEMENT = re.compile(r"(?:^|(?<=\s))(\S+) = (\S+?)\.(?=\s|$)")
_QUESTION = re.compile(r"What is (\S+?)\?")


def chain_queries(text: str) -> list[tuple[int, list[str], bool]]:
    """Every chain a chain prompt poses at a position, for the warm-ups (supervision=lookup: its first step; supervision=chains):
    where a name is referred to (a statement's right-hand side, or the question's name) after the statement that
    assigns it, (the character offset just past that reference, the words its chain reaches through the statements
    before that reference, whether that chain is complete). Complete: it ends at a word no statement of the prompt
    assigns (a value word); otherwise it stops at a name assigned only later, which a causal core there has not
    seen. The question's own chain is the task's trace."""
    assigned: dict[str, str] = {}
    statements = [(m.end(2), m.start(), m.group(1), m.group(2)) for m in _STATEMENT.finditer(text)]
    names = {name for _, _, name, _ in statements}
    refs = statements + [(m.end(1), m.start(), None, m.group(1)) for m in _QUESTION.finditer(text)]
    out = []
    for end, start, name, ref in sorted(refs):
        chain, word = [], ref
        while word in assigned and len(chain) <= len(assigned):
            word = assigned[word]
            chain.append(word)
        if chain:
            out.append((end, chain, word not in names))
        if name is not None:
            if name in assigned:
                raise RLFError(f"chain prompt assigns {name!r} twice: {text!r}")
            assigned[name] = ref
    return out

