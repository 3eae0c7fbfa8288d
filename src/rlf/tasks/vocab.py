"""Word pools for the generators, built from a tokenizer so every target is one token in context.

A word qualifies when `tokenizer(" " + word)` is exactly one token (the single-token rule of
SPEC §3). Pools are sorted, so the same tokenizer and seed always give the same examples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from rlf.errors import RLFError

# Common first names; only those that are one token for the tokenizer are kept.
FIRST_NAMES = """
Aaron Adam Alan Albert Alex Alice Amy Andrew Angela Ann Anna Anne Arthur Ben Beth Betty Bill Bob
Brian Bruce Carl Carlos Carol Chris Claire Clara Dan Daniel David Dave Dennis Diana Emily Emma
Eric Eva Eve Frank Fred Gary George Grace Greg Hannah Harry Helen Henry Hugo Ian Jack Jacob
Jake James Jane Jason Jeff Jennifer Jerry Jessica Jim Joe John Jonathan Joseph Josh Juan Julia
Julie Karen Kate Katie Kelly Ken Kevin Kim Larry Laura Leo Linda Lisa Lucy Luke Maria Mark
Martin Mary Matt Max Mia Michael Mike Nancy Nick Nina Noah Oliver Oscar Owen Pat Paul Peter
Phil Rachel Ray Rebecca Richard Rick Rob Robert Roger Rose Ruth Ryan Sam Sandra Sara Sarah Scott
Sean Simon Sophie Steve Susan Ted Tim Tom Tony Victor Walter Will William
""".split()

# Number words for tokenizers that split digits (SmolLM2 writes " 12" as " ", "1", "2").
NUMBER_WORDS = {
    0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
    9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen", 14: "fourteen", 15: "fifteen",
    16: "sixteen", 17: "seventeen", 18: "eighteen", 19: "nineteen", 20: "twenty", 30: "thirty",
    40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety",
}  # fmt: skip

# Words the prompts themselves use; keeping them out of the value pool keeps prompts unambiguous.
RESERVED_WORDS = frozenset("what every the and was are who where which not one".split())

_WORD = re.compile(r"[a-z]{3,}")
_VARIABLE = re.compile(r"[A-Z]{1,2}")


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so per-vocab tables can be cached
class Vocab:
    """Single-token pools: `names` (variables: A, K, QZ), `words` (values, concepts), `people`, `numbers`."""

    names: tuple[str, ...]
    words: tuple[str, ...]
    people: tuple[str, ...]
    numbers: dict[int, str]
    tokenizer: object = field(repr=False)

    def single_tokens(self, candidates: tuple[str, ...]) -> list[str]:
        """The candidates that are one token with a leading space, in their order (cached)."""
        return list(_single_token_cached(self, tuple(candidates)))


_CACHE: dict[int, tuple[object, Vocab]] = {}  # id(tokenizer) -> (tokenizer, vocab); keeps the tokenizer alive


def build_vocab(tokenizer) -> Vocab:
    """The pools for `tokenizer`, built once per tokenizer object (about 0.3 s) and then cached."""
    hit = _CACHE.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    vocab = Vocab(
        names=tuple(sorted(_single_token(tokenizer, _variable_candidates()), key=lambda s: (len(s), s))),
        words=tuple(sorted(_single_token(tokenizer, _word_candidates(tokenizer)))),
        people=tuple(_single_token(tokenizer, FIRST_NAMES)),
        numbers=_numbers(tokenizer),
        tokenizer=tokenizer,
    )
    if len(vocab.names) < 64 or len(vocab.words) < 1000 or len(vocab.people) < 40 or len(vocab.numbers) < 11:
        raise RLFError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has too few single-token words for "
            f"the generators: {len(vocab.names)} variable names (need 64), {len(vocab.words)} words (need 1000), "
            f"{len(vocab.people)} first names (need 40), {len(vocab.numbers)} numbers (need 0-10)"
        )
    _CACHE[id(tokenizer)] = (tokenizer, vocab)
    return vocab


def _single_token(tokenizer, candidates: list[str]) -> list[str]:
    """The candidates whose leading-space form is exactly one token (order kept)."""
    if not candidates:
        return []
    encoded = tokenizer([" " + w for w in candidates], add_special_tokens=False)["input_ids"]
    return [w for w, ids in zip(candidates, encoded) if len(ids) == 1]


@lru_cache(maxsize=256)
def _single_token_cached(vocab: Vocab, candidates: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_single_token(vocab.tokenizer, list(candidates)))


def _variable_candidates() -> list[str]:
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    return letters + [a + b for a in letters for b in letters]


def _word_candidates(tokenizer) -> list[str]:
    """Lowercase alphabetic tokens of 3+ letters that start a word (byte-level `Ġ` or sentencepiece `▁`)."""
    seen = set()
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if token and token[0] in "Ġ▁":
            word = token[1:]
            if _WORD.fullmatch(word) and word not in RESERVED_WORDS:
                seen.add(word)
    return sorted(seen)


def _numbers(tokenizer) -> dict[int, str]:
    """Each number 0-999 written as digits when that is one token, else as a one-token number word."""
    digits = dict(zip(_single_token(tokenizer, [str(i) for i in range(1000)]), [None] * 1000))
    words = set(_single_token(tokenizer, list(NUMBER_WORDS.values())))
    out = {}
    for i in range(1000):
        if str(i) in digits:
            out[i] = str(i)
        elif NUMBER_WORDS.get(i) in words:
            out[i] = NUMBER_WORDS[i]
    return out
