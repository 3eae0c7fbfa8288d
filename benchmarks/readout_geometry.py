"""How hard is it to read a prompt word out through the frozen LM head? Two measurements on the embedded base.

1. Self top-1 of the tied embedding: for each variable name and the first 3,000 value words of the chain
   generator's pools, is the word's own head row the argmax of (head @ its embedding)?
2. A linear read-out: least squares from the encoder's state at each token of 1,500 backward-chain prompts to
   that token's head direction (row / final-norm weight, unit length); top-1 through final norm + head on 20%
   held-out positions, overall and at the positions of value words and of names (what a chain's loops must name).
   With several encoder depths, one linear read-out per depth: how much of a token's identity each keeps.

    python benchmarks/readout_geometry.py [--encoder-layers 2,4,6] [--out docs/experiments/readout_geometry.json]
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
    ap.add_argument("--out", default="docs/experiments/readout_geometry.json")
    ap.add_argument("--encoder-layers", default="6", help="comma-separated encoder depths, e.g. 2,4,6")
    ap.add_argument("--prompts", type=int, default=1500)
    args = ap.parse_args()
    depths = [int(x) for x in args.encoder_layers.split(",")]
    base = load_base("smollm2-135m", depths[0])
    W, g = base.lm_head.float(), base.final_norm.weight.float()
    vocab = build_vocab(base.tokenizer)
    first_id = lambda w: base.tokenizer.encode(" " + w, add_special_tokens=False)[0]  # noqa: E731
    ids = torch.tensor([first_id(w) for w in list(vocab.names) + list(vocab.words[:3000])])
    self_top1 = float(((W[ids] @ W.T).argmax(-1) == ids).float().mean())
    name_ids = torch.tensor(sorted({first_id(w) for w in vocab.names}))
    value_ids = torch.tensor(sorted({first_id(w) for w in vocab.words} - set(name_ids.tolist())))

    examples = generate("chain", args.prompts, [1, 2, 3, 4, 5], 0, base.tokenizer, order="backward", distractors=2)
    template = TrainConfig().template
    tokens = base.tokenize([apply_template(template, ex.prompt) for ex in examples])  # the same ids at every depth
    readout = {}
    for depth in depths:
        base = base if depth == depths[0] else load_base("smollm2-135m", depth)
        X, T = [], []
        for i in range(0, len(tokens), 50):
            tok = tokens[i : i + 50]
            x, _ = base.encode_ids(tok)
            for row, seq in enumerate(tok):
                X.append(x[row, : len(seq)].float())
                T += seq
        X, T = torch.cat(X), torch.tensor(T)
        X = X / X.norm(dim=-1, keepdim=True)
        Y = W[T] / g
        Y = Y / Y.norm(dim=-1, keepdim=True)
        perm = torch.randperm(len(T), generator=torch.Generator().manual_seed(0))
        train, test = perm[: int(0.8 * len(T))], perm[int(0.8 * len(T)) :]
        A = X[train]
        M = torch.linalg.solve(A.T @ A + 0.1 * torch.eye(A.shape[1]), A.T @ Y[train])
        pred = X[test] @ M
        logits = (g * pred / pred.pow(2).mean(-1, keepdim=True).sqrt()) @ W.T
        hit, t = logits.argmax(-1) == T[test], T[test]
        kinds = {"all": torch.ones_like(hit), "value words": torch.isin(t, value_ids), "names": torch.isin(t, name_ids)}
        readout[depth] = {k: {"rate": round(float(hit[m].float().mean()), 4), "n": int(m.sum())}
                          for k, m in kinds.items()}
        print(depth, json.dumps(readout[depth]), flush=True)
    result = {"command": f"python benchmarks/readout_geometry.py --encoder-layers {args.encoder_layers}",
              "embedding_self_top1": {"rate": round(self_top1, 4), "n": len(ids),
                                      "what": "names + first 3000 value words: own head row is argmax of W @ e"},
              "linear_readout_top1_by_encoder_layers": readout,
              "linear_readout": {"prompts": args.prompts, "n_train_positions": len(train),
                                 "what": "ridge (lambda 0.1) from unit encoder states to unit W_t / g, top-1 through "
                                         "final norm + head, on 20% held-out token positions: all, those holding a "
                                         "value word, those holding a name"}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
