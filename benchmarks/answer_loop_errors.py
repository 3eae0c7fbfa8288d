"""Where a chain run's answer loop goes when every pointer before it is right.

    python benchmarks/answer_loop_errors.py RUN DATA.jsonl [N] [--show K]

For the first N examples of DATA (chain prompts `X = Y.`), runs the model as `rlf solve` does and, over the
examples whose pointer loops are all right, counts the answer loop's word as: right, another chain-end value of
the prompt, a name of the prompt, <HALT>, or another word; then shows K of the wrong answers with their p.
"""

from __future__ import annotations

import argparse
import collections
import json
import re

import torch

from rlf.train import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("n", nargs="?", type=int, default=300)
    ap.add_argument("--show", type=int, default=15, help="wrong answers to print")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run = load_run(args.run)
    with open(args.data) as f:
        rows = [json.loads(line) for line in f][: args.n]
    traces = run.solve([r["prompt"] for r in rows])
    kinds, wrong = collections.Counter(), []
    for r, trace in zip(rows, traces):
        targets, got = r["targets"], [s["token"] for s in trace]
        k = len(targets) - 1  # the answer loop
        if got[:k] != targets[:k]:
            continue
        answer = got[k] if len(got) > k else "<none>"
        statements = dict(re.findall(r"(\w+) = (\w+)\.", r["prompt"]))
        names, values = set(statements), set(statements.values()) - set(statements)
        kind = ("right" if answer == targets[k] else "another chain-end value" if answer in values
                else "a name" if answer in names else "<HALT>" if answer == "<HALT>" else "another word")
        kinds[kind] += 1
        if kind != "right":
            wrong.append((targets[k], answer, trace[k]["p"] if len(trace) > k else float("nan")))
    print(json.dumps({"data": args.data, "n": len(rows), "chains_right_to_the_answer": sum(kinds.values()),
                      "answer_loop": dict(kinds)}))
    for target, answer, p in wrong[: args.show]:
        print(f"{target} -> {answer} (p {p:.2f})")


if __name__ == "__main__":
    main()
