"""Answer accuracy of a no-loop run (supervision=answer_once) on the validation split and held-out hop counts.

`rlf eval` measures traces, which a no-loop run does not have; `rlf bench headline` measures its answer (the top-1
token after one pass of the core) on the headline's sets only. This measures the same answer on the run's own
validation split and on `rlf eval`'s held-out sets for any hop counts (the sets the sweep's dev columns use), with
Wilson intervals, beside the guess: the mean of 1/k, k the number of value words in a prompt (right-hand sides that
are no statement's name; for chains with distractors, one per chain).

    python benchmarks/no_loop_answers.py RUN [--hops 7,9,12] [--n 100] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rlf.evaluate import eval_sets, fmt_rate
from rlf.headline.measure import _answer_rate, loop_one_answers
from rlf.tasks import parse_hops, read_jsonl
from rlf.train import load_run, prepare_split


def value_words(prompt: str) -> int:
    """How many statements of `X = Y.` have a Y that is no statement's X."""
    statements = re.findall(r"(\w+) = (\w+)\.", prompt)
    names = {x for x, _ in statements}
    return sum(y not in names for _, y in statements)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--hops", default="7,9,12")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out")
    args = ap.parse_args()
    run_dir = Path(args.run)
    run = load_run(run_dir)
    if run.config.supervision != "answer_once":
        raise SystemExit(f"{run_dir}: supervision={run.config.supervision}, not a no-loop run: use rlf eval")
    sets = {"val": read_jsonl(run_dir / "val.jsonl")}
    ood = eval_sets(run, run_dir, hops=parse_hops(args.hops), n=args.n)
    for name, examples in ood.items():
        for h in sorted({ex.hops for ex in examples}):
            sets[f"{name} {h} hops"] = [ex for ex in examples if ex.hops == h]
    result = {"run": str(run_dir), "command": f"python benchmarks/no_loop_answers.py {args.run} --hops {args.hops} "
                                              f"--n {args.n}", "answer_acc": {}}
    for name, examples in sets.items():
        split = prepare_split(examples, run.base, run.config, name, False)
        result["answer_acc"][name] = r = _answer_rate(loop_one_answers(run.model, split), split.target_ids)
        r["guess"] = round(sum(1 / value_words(ex.prompt) for ex in examples) / len(examples), 4)
        print(f"{name}: answer {fmt_rate(r)}, guessing among the value words {100 * r['guess']:.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
