"""`graph`: ProsQA-style ontology questions over arbitrary concept words.

Facts `Tom is a lamp.` / `Every lamp is a river.` (shuffled), then `Is Tom a river or a cloud?`,
one option reachable from the subject, one not. k hops = k `Every` links on the path; targets =
the concepts along the (unique) shortest path from the subject, the answer last (k + 1).
Concepts are random one-token words, so the base model has no prior about them (ProsQA's invented
words such as "wumpus" are several tokens for most tokenizers). `distractors=N` adds N dead-end
concepts hanging off the reachable part; the negative branch (as long as the path, reachable from
another person) also points into the path, which never shortens it because the subject cannot
reach the negative branch.
"""

from __future__ import annotations

from random import Random

from rlf.tasks.sampling import Sample, article, check_count, check_pool
from rlf.tasks.vocab import Vocab


def sample_graph(rng: Random, hops: int, vocab: Vocab, distractors: int = 4) -> Sample:
    """One ontology question whose answer is `hops` links above the subject's own concept."""
    check_count("graph", "distractors", distractors)
    n_concepts = 2 * (hops + 1) + distractors
    check_pool("graph", "concept words", n_concepts, vocab.words, "use fewer hops or distractors")
    concepts = rng.sample(vocab.words, n_concepts)
    path, negative, dead_ends = concepts[: hops + 1], concepts[hops + 1 : 2 * hops + 2], concepts[2 * hops + 2 :]
    subject, other = rng.sample(vocab.people, 2)

    def every(a: str, b: str) -> str:
        return f"Every {a} is {article(b)} {b}."

    statements = [f"{subject} is {article(path[0])} {path[0]}.", f"{other} is {article(negative[0])} {negative[0]}."]
    statements += [every(a, b) for a, b in zip(path, path[1:])]
    statements += [every(a, b) for a, b in zip(negative, negative[1:])]
    statements += [every(n, rng.choice(path[1:])) for n in negative[:-1] if rng.random() < 0.5]
    reachable = [subject, *path]
    for d in dead_ends:  # hangs off something the subject reaches; leads nowhere
        parent = rng.choice(reachable)
        statements.append(f"{parent} is {article(d)} {d}." if parent == subject else every(parent, d))
        reachable.append(d)
    rng.shuffle(statements)
    answer, wrong = path[-1], negative[-1]
    first, second = (answer, wrong) if rng.random() < 0.5 else (wrong, answer)
    return Sample(
        statements,
        f"Is {subject} {article(first)} {first} or {article(second)} {second}?",
        list(path),
        {"neg": wrong, "distractors": distractors},
    )
