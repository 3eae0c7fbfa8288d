"""Adversarial mode for any task: distractor facts, prose sentences and noise strings in the prompt.

Noise goes between the prompt's sentences, never after the question, and never mentions a word of
the prompt, so it cannot change any answer: distractor facts (`There is a lamp near the river.`) use
words the prompt does not; prose sentences are bland and name no one; noise strings are random
letters, digits and symbols (no `=`, `?` or operator) ended by a period.
"""

from __future__ import annotations

import re
import string
from dataclasses import replace
from random import Random

from rlf.tasks.sampling import article
from rlf.tasks.schema import Example
from rlf.tasks.vocab import Vocab, build_vocab

PROSE = (
    "It was a quiet afternoon.",
    "Nobody remembered the meeting.",
    "The window rattled in the wind.",
    "Someone laughed in the next room.",
    "A bell rang somewhere far away.",
    "The report was long and dull.",
    "The train was late again.",
    "Birds sang outside.",
    "The lights flickered for a moment.",
    "Nothing else happened that day.",
    "The door creaked open and shut.",
    "Everyone waited in silence.",
)
NOISE_CHARACTERS = string.ascii_lowercase + string.digits + "#@%&_~"
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_WORDS = re.compile(r"[A-Za-z]+")


def add_noise(prompt: str, rng: Random, vocab: Vocab, count: int) -> str:
    """`prompt` with `count` distractor facts, prose sentences or noise strings inserted before the question."""
    sentences = _SENTENCE_END.split(prompt)
    body, question = sentences[:-1], sentences[-1]
    used = {w.lower() for w in _WORDS.findall(prompt)}
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            a, b = _unused_words(rng, vocab, used, 2)
            noise = f"There is {article(a)} {a} near the {b}."
        elif kind == 1:
            noise = rng.choice(PROSE)
        else:
            groups = ("".join(rng.choices(NOISE_CHARACTERS, k=rng.randint(2, 7))) for _ in range(rng.randint(1, 4)))
            noise = " ".join(groups) + "."
        body.insert(rng.randint(0, len(body)), noise)
    return " ".join([*body, question])


def _unused_words(rng: Random, vocab: Vocab, used: set[str], k: int) -> list[str]:
    out: list[str] = []
    while len(out) < k:
        word = rng.choice(vocab.words)
        if word not in used and word not in out:
            out.append(word)
    return out


def make_adversarial(examples: list[Example], count: int, seed: int, tokenizer) -> list[Example]:
    """Copies of any examples (generated or loaded) with `count` noise sentences in each prompt."""
    vocab = build_vocab(tokenizer)
    rng = Random(seed)
    return [
        replace(ex, prompt=add_noise(ex.prompt, rng, vocab, count), meta={**ex.meta, "adversarial": count})
        for ex in examples
    ]
