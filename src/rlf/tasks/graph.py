"""`graph`: ProsQA-style ontology questions over arbitrary concept words.

Facts `Tom is a lamp.` / `Every lamp is a river.` (shuffled), then `Is Tom a river or a cloud?`,
one option reachable from the subject, one not. k hops = k `Every` links on the path; targets =
the concepts along the (unique) shortest path from the subject, the answer last (k + 1).
`words=vocab` (the default): concepts are random one-token words, so the base model has no prior
about them. `words=prosqa`: invented words in ProsQA's style (`shumpus`, `worpus`, `gwompus`: a
syllable onset, vowel and l/m/r, then `pus`), 2 to `word_tokens` base tokens each (the run's
target_tokens), ProsQA's people, and its sentence forms (`a` before every concept,
`Is Tom a lempus or scrompus?`), so a model trained on them reads Coconut's ProsQA files as they are.
`distractors=N` adds N dead-end concepts hanging off the reachable part; the negative branch (as long
as the path, reachable from another person) also points into the path, which never shortens it
because the subject cannot reach the negative branch.
"""

from __future__ import annotations

from functools import lru_cache
from random import Random

from rlf.errors import RLFError
from rlf.tasks.sampling import Sample, article, check_count, check_pool
from rlf.tasks.vocab import Vocab

WORDS = ("vocab", "prosqa")
# ProsQA's 38 concept words are all onset + vowel + l/m/r + "pus"; these parts make each of them and 664 more.
ONSETS = ("", *"b bl br ch d dr f fl g gl gr gw h j k l m n p pl qu r s sc scr sh sl sn st str t th tr v w y z zh"
          .split())
VOWELS = ("a", "e", "i", "o", "u", "oo")
CODAS = ("l", "m", "r")
# The 17 people of ProsQA's validation and test splits.
PROSQA_PEOPLE = tuple("Alex Bob Carol Davis Eva Fae Gabriel Jack Max Oliver Polly Rex Sally Sam Stella Tom Wren"
                      .split())


def sample_graph(
    rng: Random, hops: int, vocab: Vocab, distractors: int = 4, words: str = "vocab", word_tokens: int = 4
) -> Sample:
    """One ontology question whose answer is `hops` links above the subject's own concept."""
    check_count("graph", "distractors", distractors)
    n_concepts = 2 * (hops + 1) + distractors
    if words == "vocab":
        if word_tokens != 4:
            raise RLFError(f"graph: option word_tokens={word_tokens!r} applies to words=prosqa only")
        check_pool("graph", "concept words", n_concepts, vocab.words, "use fewer hops or distractors")
        pool, people, an = vocab.words, vocab.people, article
    elif words == "prosqa":
        check_count("graph", "word_tokens", word_tokens, low=2)
        pool, people, an = prosqa_words(vocab, word_tokens), PROSQA_PEOPLE, lambda _: "a"
        if n_concepts > len(pool):
            raise RLFError(f"graph: needs {n_concepts} distinct concept words but words=prosqa gives only "
                           f"{len(pool)} of 2 to {word_tokens} tokens; use fewer hops or distractors, or a larger "
                           "word_tokens")
    else:
        raise RLFError(f"graph: option words={words!r} must be one of {', '.join(WORDS)}")
    concepts = rng.sample(pool, n_concepts)
    path, negative, dead_ends = concepts[: hops + 1], concepts[hops + 1 : 2 * hops + 2], concepts[2 * hops + 2 :]
    subject, other = rng.sample(people, 2)

    def every(a: str, b: str) -> str:
        return f"Every {a} is {an(b)} {b}."

    statements = [f"{subject} is {an(path[0])} {path[0]}.", f"{other} is {an(negative[0])} {negative[0]}."]
    statements += [every(a, b) for a, b in zip(path, path[1:])]
    statements += [every(a, b) for a, b in zip(negative, negative[1:])]
    statements += [every(n, rng.choice(path[1:])) for n in negative[:-1] if rng.random() < 0.5]
    reachable = [subject, *path]
    for d in dead_ends:  # hangs off something the subject reaches; leads nowhere
        parent = rng.choice(reachable)
        statements.append(f"{parent} is {an(d)} {d}." if parent == subject else every(parent, d))
        reachable.append(d)
    rng.shuffle(statements)
    answer, wrong = path[-1], negative[-1]
    first, second = (answer, wrong) if rng.random() < 0.5 else (wrong, answer)
    if words == "vocab":
        question, meta = f"Is {subject} {article(first)} {first} or {article(second)} {second}?", {}
    else:
        question, meta = f"Is {subject} a {first} or {second}?", {"words": words}
    return Sample(statements, question, list(path), {"neg": wrong, "distractors": distractors, **meta})


@lru_cache(maxsize=32)
def prosqa_words(vocab: Vocab, max_tokens: int) -> tuple[str, ...]:
    """The invented ProsQA-style words (sorted) that are 2 to `max_tokens` tokens with a leading space."""
    candidates = sorted({onset + vowel + coda + "pus" for onset in ONSETS for vowel in VOWELS for coda in CODAS})
    encoded = vocab.tokenizer([" " + w for w in candidates], add_special_tokens=False)["input_ids"]
    return tuple(w for w, ids in zip(candidates, encoded) if 2 <= len(ids) <= max_tokens)
