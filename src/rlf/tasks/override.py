"""`override`: counterfactual facts that contradict the base model's priors.

`fire is icy. Bob touched fire. What did Bob feel?` -> `fire, icy`. With k hops, k - 1 people relay
the action (`Ann touched what Bob touched.`), so the targets dereference from the asked person:
`Bob, fire, icy` (k + 1). `distractors=N` adds N other objects with their own counterfactual
property and their own person. `factual=True` states the prior property instead (a control).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from random import Random

from rlf.tasks.sampling import Sample, check_count, check_pool
from rlf.tasks.vocab import Vocab


@dataclass(frozen=True)
class Sense:
    """A sense: how an action is written, how the question asks, the properties, each object's prior."""

    verb: str
    question: str
    properties: tuple[str, ...]
    priors: dict[str, str]


SENSES = {
    "touch": Sense(
        "touched",
        "What did {person} feel?",
        ("hot", "cold", "icy", "warm", "wet", "dry", "soft", "hard", "sharp", "smooth", "rough", "sticky"),
        {"fire": "hot", "ice": "icy", "snow": "cold", "stove": "hot", "water": "wet", "sand": "dry",
         "pillow": "soft", "rock": "hard", "knife": "sharp", "glass": "smooth", "brick": "rough",
         "honey": "sticky", "steam": "hot", "feather": "soft", "stone": "hard", "blade": "sharp"},
    ),
    "taste": Sense(
        "tasted",
        "What flavor did {person} taste?",
        ("sweet", "sour", "bitter", "salty", "spicy"),
        {"sugar": "sweet", "lemon": "sour", "salt": "salty", "coffee": "bitter", "pepper": "spicy",
         "candy": "sweet", "vinegar": "sour", "chili": "spicy", "cake": "sweet", "lime": "sour"},
    ),
    "see": Sense(
        "saw",
        "What color did {person} see?",
        ("red", "green", "blue", "white", "black", "yellow", "orange", "purple", "pink", "brown"),
        {"grass": "green", "coal": "black", "sky": "blue", "blood": "red", "banana": "yellow",
         "milk": "white", "cloud": "white", "tomato": "red", "leaf": "green", "ocean": "blue",
         "carrot": "orange", "chocolate": "brown", "night": "black", "cherry": "red"},
    ),
}  # fmt: skip


@lru_cache(maxsize=16)
def usable_senses(vocab: Vocab) -> dict[str, Sense]:
    """The senses restricted to objects and properties that are one token for this tokenizer."""
    out = {}
    for name, sense in SENSES.items():
        properties = tuple(vocab.single_tokens(sense.properties))
        objects = vocab.single_tokens(tuple(sense.priors))
        priors = {o: sense.priors[o] for o in objects if sense.priors[o] in properties}
        if len(properties) >= 2 and priors:
            out[name] = Sense(sense.verb, sense.question, properties, priors)
    return out


def sample_override(rng: Random, hops: int, vocab: Vocab, distractors: int = 0, factual: bool = False) -> Sample:
    """One counterfactual fact, an action and k - 1 relays; the question asks the last person."""
    check_count("override", "distractors", distractors)
    senses = usable_senses(vocab)
    check_pool("override", "senses with one-token objects", 1, list(senses))
    all_objects = [(o, s) for s in sorted(senses) for o in senses[s].priors]
    check_pool("override", "objects", distractors + 1, all_objects, "use fewer distractors")
    check_pool("override", "first names", hops + distractors, vocab.people, "use fewer hops or distractors")
    sense_name = rng.choice(sorted(senses))
    obj = rng.choice(sorted(senses[sense_name].priors))
    others = rng.sample([pair for pair in all_objects if pair[0] != obj], distractors)
    people = rng.sample(vocab.people, hops + distractors)

    def facts(obj: str, sense_name: str, counterfactual: bool) -> tuple[str, str]:
        sense = senses[sense_name]
        prior = sense.priors[obj]
        prop = rng.choice([p for p in sense.properties if p != prior]) if counterfactual else prior
        return prop, f"{obj} is {prop}."

    sense = senses[sense_name]
    prop, fact = facts(obj, sense_name, not factual)
    statements = [fact, f"{people[0]} {sense.verb} {obj}."]
    statements += [f"{people[i]} {sense.verb} what {people[i - 1]} {sense.verb}." for i in range(1, hops)]
    for (other, other_sense), person in zip(others, people[hops:]):
        statements += [facts(other, other_sense, True)[1], f"{person} {senses[other_sense].verb} {other}."]
    rng.shuffle(statements)
    return Sample(
        statements,
        sense.question.format(person=people[hops - 1]),
        [*people[: hops - 1][::-1], obj, prop],
        {"sense": sense_name, "prior": sense.priors[obj], "factual": factual, "distractors": distractors},
    )
