"""Does a run's read-out point at the prompt's words? For the first N val chains of a run: per loop (first
pointer, next target), the target's cross-entropy, the probability mass on the words of the prompt's statements,
the target's rank among those words, and how often the top-1 token is one of them.

    python benchmarks/prompt_word_mass.py RUN [--n 64] [--loops 2]

A model that has learnt nothing but "some word" puts little mass on the prompt's words; one that has learnt the
candidates but not the lookup puts most of its mass there with the target at a middling rank. Not a test.
"""

import argparse
import json
import re
from pathlib import Path

import torch

from rlf.train import load_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--loops", type=int, default=2)
    args = ap.parse_args()
    run = load_run(args.run, device="cpu")
    rows = [json.loads(line) for line in (Path(args.run) / "val.jsonl").read_text().splitlines()][: args.n]
    rows = [r for r in rows if len(r["targets"]) >= args.loops]
    tok = run.base.tokenizer
    first_id = lambda w: tok(" " + w).input_ids[0]  # noqa: E731
    x, lengths = run.encode([r["prompt"] for r in rows])
    with torch.no_grad():
        p = run.model(x, lengths, args.loops).float().softmax(-1)
    n = len(rows)
    for loop in range(args.loops):
        target = torch.tensor([first_id(r["targets"][loop]) for r in rows])
        ce = -p[torch.arange(n), loop, target].log().mean().item()
        mass = rank = top_in = 0.0
        for b, r in enumerate(rows):
            ids = sorted({first_id(w) for w in re.findall(r"[A-Za-z]+", r["prompt"].rsplit("What", 1)[0])})
            mass += p[b, loop, ids].sum().item()
            rank += sorted(ids, key=lambda i: -p[b, loop, i].item()).index(int(target[b])) + 1
            top_in += int(p[b, loop].argmax().item() in ids)
        print(f"loop {loop}: target CE {ce:.2f}, mass on prompt words {mass / n:.3f}, target rank among the prompt's "
              f"words {rank / n:.1f}, top-1 a prompt word {int(top_in)}/{n}")


if __name__ == "__main__":
    main()
