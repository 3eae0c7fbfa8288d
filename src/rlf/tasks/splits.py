"""Splits: in-distribution train/val/test by hop count, and out-of-distribution sets at longer hops.

No prompt is ever in two splits: generated splits exclude each other's prompts, and a loaded file is
split by prompt (all examples that share a prompt go to the same split).
"""

from __future__ import annotations

from collections import defaultdict
from random import Random

from rlf.errors import RLFError
from rlf.tasks.schema import Example
from rlf.tasks.suite import generate

DEFAULT_OOD_HOPS = (6, 8, 10, 12, 16, 24, 32)


def default_ood_hops(train_hops: list[int]) -> list[int]:
    """The default OOD hop counts beyond the training range (6, 8, 10, 12, 16, 24, 32 when training on 1-5)."""
    return [h for h in DEFAULT_OOD_HOPS if h > max(train_hops)]


def make_splits(
    task: str,
    tokenizer,
    *,
    train_hops: list[int],
    n_train: int,
    n_val: int,
    n_test: int,
    n_ood: int = 0,
    ood_hops: list[int] | None = None,
    seed: int = 0,
    **options,
) -> dict[str, list[Example]]:
    """Generate `train`, `val`, `test` (each balanced over `train_hops`) and `ood` (over `ood_hops`,
    default `default_ood_hops(train_hops)`) with no prompt shared between them."""
    plan = {"train": (n_train, train_hops), "val": (n_val, train_hops), "test": (n_test, train_hops)}
    if n_ood:
        ood_hops = default_ood_hops(train_hops) if ood_hops is None else ood_hops
        if not ood_hops:
            raise RLFError(f"{task}: no default OOD hops above {max(train_hops)}; pass ood_hops")
        overlap = sorted(set(ood_hops) & set(train_hops))
        if overlap:
            raise RLFError(f"{task}: OOD hops {overlap} are also training hops")
        plan["ood"] = (n_ood, ood_hops)
    seen: set[str] = set()
    splits = {}
    for name, (n, hops) in plan.items():
        if n == 0:
            splits[name] = []
            continue
        examples = generate(
            task, n, hops, Random(f"{seed}:{name}").getrandbits(63), tokenizer,
            exclude_prompts=seen, id_prefix=f"{task}-{name}", **options,
        )  # fmt: skip
        seen.update(ex.prompt for ex in examples)
        splits[name] = examples
    return splits


def split_examples(
    examples: list[Example], val: float = 0.1, test: float = 0.1, seed: int = 0, ood_hops: list[int] = ()
) -> dict[str, list[Example]]:
    """Split loaded examples into `train`/`val`/`test` by fractions, per hop count, keeping all examples
    that share a prompt together; examples whose hops are in `ood_hops` go to `ood`."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise RLFError(f"split fractions val={val}, test={test} must be in [0, 1) and leave some for training")
    ood = set(ood_hops)
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.prompt].append(ex)
    mixed = sorted(p for p, g in groups.items() if len({ex.hops in ood for ex in g}) > 1)
    if mixed:
        raise RLFError(f"prompt {mixed[0]!r} appears with both OOD and training hop counts; it cannot go in one split")
    by_hops: dict[int, list[str]] = defaultdict(list)  # hops of a group's first example -> prompts
    for prompt, group in groups.items():
        by_hops[group[0].hops].append(prompt)
    rng = Random(seed)
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    if ood:
        out["ood"] = []
    for hops in sorted(by_hops):
        prompts = by_hops[hops]
        rng.shuffle(prompts)
        if hops in ood:
            out["ood"] += [ex for p in prompts for ex in groups[p]]
            continue
        n_val, n_test = round(len(prompts) * val), round(len(prompts) * test)
        parts = {"val": prompts[:n_val], "test": prompts[n_val : n_val + n_test], "train": prompts[n_val + n_test :]}
        for name, part in parts.items():
            out[name] += [ex for p in part for ex in groups[p]]
    for name in out:
        rng.shuffle(out[name])
    return out
