"""Where a chain run's traces go wrong: the answer loop when every pointer before it is right, and every trace's
first wrong loop.

    python benchmarks/answer_loop_errors.py RUN DATA.jsonl [DATA.jsonl ...] [--n N] [--show K]

For the first N examples of each DATA file (chain prompts `X = Y.`), runs the model as `rlf solve` does and, over the
examples whose pointer loops are all right, counts the answer loop's word as: right, another chain-end value of
the prompt, a name of the prompt, <HALT>, or another word; then shows K of the wrong answers with their p.
For every wrong trace it also counts its first wrong loop by kind (`first_error`): <HALT> too early, no <HALT>
where one is due, the chain's word a hop ahead (a skipped statement), a word of the chain already passed, a word of
a distractor chain, another word; and by where that loop lies (`first_error_loop`: 0 is the question's lookup).
And per lookup (`lookups_by_statement`: each pointer loop a trace reaches with every loop before it right), whether
it was right, by where the statement it must find stands: first in the prompt, or later. With template "{prompt}"
the first statement's name is split into other tokens than the same word elsewhere, and its lookups fail far more.

Several DATA files may be given (their counts are summed).
"""

from __future__ import annotations

import argparse
import collections
import json
import re

import torch

from rlf.train import load_run


def first_error_kind(prompt: str, want: list[str], got: list[str], i: int) -> str:
    """What a trace named at its first wrong loop i (want: the targets, then <HALT>)."""
    if i >= len(got):
        return "stopped without <HALT>"
    word = got[i]
    if word == "<HALT>":
        return "<HALT> too early"
    if want[i] == "<HALT>":
        return "no <HALT> where due"
    question = re.search(r"What is (\w+)\?", prompt).group(1)
    if word in want[i + 1:]:
        return "a word of the chain further on"
    if word in [question, *want[:i]]:
        return "a word of the chain already passed"
    if word in {w for statement in re.findall(r"(\w+) = (\w+)\.", prompt) for w in statement}:
        return "a word of a distractor chain"
    return "another word"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("data", nargs="+")
    ap.add_argument("--n", type=int, default=300, help="examples of each DATA file")
    ap.add_argument("--show", type=int, default=15, help="wrong answers to print")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = load_run(args.run)
    rows, traces = [], []
    for path in args.data:  # one file at a time: a batch pads to its longest prompt
        with open(path) as f:
            rows += [json.loads(line) for line in f][: args.n]
        traces += run.solve([r["prompt"] for r in rows[len(traces):]])
    kinds, wrong = collections.Counter(), []
    first, first_at = collections.Counter(), collections.Counter()
    lookups = {where: collections.Counter() for where in ("first statement", "later statement")}
    for r, trace in zip(rows, traces):
        targets, got = r["targets"], [s["token"] for s in trace]
        want = [*targets, "<HALT>"]
        bad = next((i for i, w in enumerate(want) if i >= len(got) or got[i] != w), None)
        pairs = re.findall(r"(\w+) = (\w+)\.", r["prompt"])  # the statements, in prompt order
        order = {name: i for i, (name, _) in enumerate(pairs)}
        keys = [re.search(r"What is (\w+)\?", r["prompt"]).group(1), *targets[:-1]]  # what each pointer loop looks up
        for i, key in enumerate(keys[: len(keys) if bad is None else bad + 1]):
            count = lookups["first statement" if order[key] == 0 else "later statement"]
            count["reached"] += 1
            count["wrong"] += i == bad
        if bad is not None:
            first[first_error_kind(r["prompt"], want, got, bad)] += 1
            first_at[bad] += 1
        k = len(targets) - 1  # the answer loop
        if got[:k] != targets[:k]:
            continue
        answer = got[k] if len(got) > k else "<none>"
        statements = dict(pairs)
        names, values = set(statements), set(statements.values()) - set(statements)
        kind = ("right" if answer == targets[k] else "another chain-end value" if answer in values
                else "a name" if answer in names else "<HALT>" if answer == "<HALT>" else "another word")
        kinds[kind] += 1
        if kind != "right":
            wrong.append((targets[k], answer, trace[k]["p"] if len(trace) > k else float("nan")))
    print(json.dumps({"data": args.data, "n": len(rows),
                      "lookups_by_statement": {k: dict(v) for k, v in lookups.items()},
                      "chains_right_to_the_answer": sum(kinds.values()),
                      "answer_loop": dict(kinds), "wrong_traces": sum(first.values()),
                      "first_error": dict(first.most_common()), "first_error_loop": dict(sorted(first_at.items()))}))
    for target, answer, p in wrong[: args.show]:
        print(f"{target} -> {answer} (p {p:.2f})")


if __name__ == "__main__":
    main()
