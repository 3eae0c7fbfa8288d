"""How many prompts of a chain file hold a target word that is not its own token everywhere, per template.

    python benchmarks/split_words.py DATA.jsonl [--template T ...]

Counts what `feedback=pointer` training warns of (`rlf.train.hidden_occurrences`): with template "{prompt}" the first
statement's name is other tokens (`M`,`K`) than the same word elsewhere (` MK`), so a lookup by token cannot find it.
"""

import argparse
import json

from rlf.base import load_base
from rlf.cache import tokenize_prompts
from rlf.tasks import read_jsonl
from rlf.train import hidden_occurrences, target_ids_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--template", nargs="+", default=["{prompt}", "<|endoftext|> {prompt}"])
    ap.add_argument("--base", default="smollm2-135m")
    args = ap.parse_args()
    base = load_base(args.base, 1)  # the tokenizer is all that is used
    examples = read_jsonl(args.data)
    targets = target_ids_of(examples, base.tokenizer, args.data)
    counts = {t: len(hidden_occurrences(examples, tokenize_prompts(base, t, [ex.prompt for ex in examples]), targets,
                                        base.tokenizer, t)) for t in args.template}
    print(json.dumps({"data": args.data, "n": len(examples), "prompts_with_a_split_target_word": counts}))


if __name__ == "__main__":
    main()
