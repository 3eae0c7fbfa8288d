"""`bugfix`: operator substitution. A program uses the operator variable `op`; a patch replaces it.

`op = minus. fix = plus. A = seven. B = A op two. C = B times three. Replace op with fix. What is C?`
-> `plus, nine, twenty-seven` (if writable). k hops = k operations; targets = the fixed operator
word, then the value after each operation (k + 1). At least one operation uses `op`.
"""

from __future__ import annotations

from random import Random

from rlf.errors import RLFError
from rlf.tasks.arithmetic import random_walk
from rlf.tasks.sampling import Sample, check_pool
from rlf.tasks.vocab import Vocab

OPERATOR_WORDS = {"plus": "+", "minus": "-", "times": "*"}


def sample_bugfix(rng: Random, hops: int, vocab: Vocab) -> Sample:
    """One patched program of `hops` operations."""
    check_pool("bugfix", "variable names", hops + 1, vocab.names, "use fewer hops")
    words = vocab.single_tokens(tuple(OPERATOR_WORDS))
    check_pool("bugfix", "operator words (plus, minus, times)", 2, words)
    bug, fix = rng.sample(words, 2)
    symbol_word = {OPERATOR_WORDS[w]: w for w in words}
    any_op = "".join(symbol_word)
    for _ in range(100):  # which steps use `op` (at least one); redrawn if no writable walk exists
        uses_op = [rng.random() < 0.5 for _ in range(hops)]
        uses_op[rng.randrange(hops)] = True
        walk = random_walk(rng, vocab, [OPERATOR_WORDS[fix] if u else any_op for u in uses_op])
        if walk is not None:
            break
    else:
        raise RLFError(f"bugfix: no {hops}-step program with `{fix}` stays within this tokenizer's one-token numbers")
    value, steps = walk
    names = rng.sample(vocab.names, hops + 1)
    num = vocab.numbers
    statements = [f"op = {bug}.", f"fix = {fix}.", f"{names[0]} = {num[value]}."]
    targets = [fix]
    for i, (uses, (op, operand, value)) in enumerate(zip(uses_op, steps)):
        text = "op" if uses else symbol_word[op]
        statements.append(f"{names[i + 1]} = {names[i]} {text} {num[operand]}.")
        targets.append(num[value])
    statements.append("Replace op with fix.")
    return Sample(statements, f"What is {names[-1]}?", targets, {"bug": bug})
