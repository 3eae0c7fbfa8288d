"""Does the frozen encoder already bind each statement's two sides? Linear probes on the states a core looks up in.

A lookup by content needs, at some position of each statement `X = Y.`, a state from which X can be read (the key)
next to Y (the value), and at the answer position a state from which the question's name can be read (the query).
This fits ridge classifiers (one-hot over the generator's 401 names, lambda 1) from the unit-normalised encoder
states of backward-chain prompts (distractors=2, 1-5 hops) on 80% of the prompts and reports top-1 among the names
on the other 20%:

- at Y, the name X two tokens back (the key a core would match);
- at the statement's full stop, X and (where Y is a name) Y;
- at Y, Y itself (what the state at a token holds of its own token: the control);
- at the answer position, the question's name (the query of the first loop), and at the question mark right after it.

    python benchmarks/binding_probe.py [--encoder-layers 6,12,30] [--prompts 1500] [--out docs/experiments/binding_probe.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from rlf.base import load_base
from rlf.cache import apply_template
from rlf.config import TrainConfig
from rlf.tasks import build_vocab, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/experiments/binding_probe.json")
    ap.add_argument("--encoder-layers", default="6,12,30", help="comma-separated encoder depths, each probed")
    ap.add_argument("--prompts", type=int, default=1500)
    args = ap.parse_args()
    result = {"command": f"python benchmarks/binding_probe.py --encoder-layers {args.encoder_layers} "
                         f"--prompts {args.prompts}", "by_encoder_layers": {}}
    for layers in map(int, args.encoder_layers.split(",")):
        result["by_encoder_layers"][str(layers)] = probe(load_base("smollm2-135m", layers), args.prompts)
        print(layers, {k: v["top1"] for k, v in result["by_encoder_layers"][str(layers)]["probes"].items()})
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def probe(base, n_prompts: int) -> dict:
    """Every probe's held-out top-1 at one encoder depth."""
    tok = base.tokenizer
    names = build_vocab(tok).names
    name_class = {}  # token id (with and without the leading space) -> name index
    for i, n in enumerate(names):
        for text in (n, " " + n):
            ids = tok.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                name_class[ids[0]] = i
    equals, stop = tok.encode(" =", add_special_tokens=False), tok.encode(".", add_special_tokens=False)
    assert len(equals) == 1 and len(stop) == 1, (equals, stop)
    mark = tok.encode("?", add_special_tokens=False)
    assert len(mark) == 1, mark
    equals, stop, mark = equals[0], stop[0], mark[0]

    examples = generate("chain", n_prompts, [1, 2, 3, 4, 5], 0, tok, order="backward", distractors=2)
    template = TrainConfig().template
    probes = {k: ([], [], []) for k in ("key_at_value", "key_at_stop", "value_at_stop", "own_name_at_value",
                                        "question_at_answer", "question_at_mark")}  # (states, classes, prompt index)

    def add(kind, state, token, prompt):
        if token in name_class:
            probes[kind][0].append(state)
            probes[kind][1].append(name_class[token])
            probes[kind][2].append(prompt)

    for start in range(0, len(examples), 50):
        batch = [apply_template(template, ex.prompt) for ex in examples[start : start + 50]]
        ids = base.tokenize(batch)
        x, _ = base.encode_ids(ids)
        for row, seq in enumerate(ids):
            prompt, h = start + row, x[row].float()
            for p, t in enumerate(seq[:-2]):
                if t == equals and seq[p + 2] == stop:
                    add("key_at_value", h[p + 1], seq[p - 1], prompt)
                    add("own_name_at_value", h[p + 1], seq[p + 1], prompt)
                    add("key_at_stop", h[p + 2], seq[p - 1], prompt)
                    add("value_at_stop", h[p + 2], seq[p + 1], prompt)
            question = tok.encode(" " + examples[prompt].prompt.rsplit(" ", 1)[1].rstrip("?"), add_special_tokens=False)
            add("question_at_answer", h[len(seq) - 1], question[0], prompt)
            qmark = len(seq) - 1 - seq[::-1].index(mark)
            add("question_at_mark", h[qmark], question[0], prompt)

    n_test_prompts = n_prompts // 5
    result = {"encoder_layers": base.encoder_layers, "names": len(names), "chance_top1": round(1 / len(names), 4),
              "task": "chain order=backward distractors=2 hops=1-5", "prompts": n_prompts,
              "test_prompts": n_test_prompts, "probes": {}}
    for kind, (states, classes, prompt_of) in probes.items():
        X = torch.stack(states)
        X = X / X.norm(dim=-1, keepdim=True)
        y = torch.tensor(classes)
        test = torch.tensor(prompt_of) >= n_prompts - n_test_prompts  # held out by prompt
        Y = torch.nn.functional.one_hot(y[~test], len(names)).float()
        A = X[~test]
        M = torch.linalg.solve(A.T @ A + torch.eye(A.shape[1]), A.T @ Y)
        top1 = (X[test] @ M).argmax(-1) == y[test]
        result["probes"][kind] = {"top1": round(float(top1.float().mean()), 4), "correct": int(top1.sum()),
                                  "n_test": int(test.sum()), "n_train": int((~test).sum())}
    return result


if __name__ == "__main__":
    main()
