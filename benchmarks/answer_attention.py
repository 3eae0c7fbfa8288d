"""Where a Transformer core's loops look: each attention layer's weights at each loop of chain prompts.

    python benchmarks/answer_attention.py RUN DATA.jsonl [--n N] [-o OUT.json]

For a `core=transformer loop_span=answer` run on chain prompts (statements `X = Y.`), loops the first N examples of
DATA teacher-forced, as training does (feedback=pointer: loop k is fed the key of target k - 1), and at each loop
reads the attention from the answer position. For each loop's target word T it
sums the attention (each layer, mean over heads) on T's own position in the statement that names it (`N = T.`:
the position holding T with `.` after it), on that statement's full stop, its name N (the token two before T; a
name of two tokens puts its second there) and its `=`, on the loop's own position, and elsewhere; separately for
the pointer loops (T a name) and the answer loop (T the value word); and the attention on T of the head that puts the
most there (`target_best_head`). Also, per head, how often the token at the position it attends to most is the
loop's target (the copy read-out that head would give), beside how often the model's own read-out is right.
Prints and writes the means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import rlf.cores.transformer as transformer
from rlf.cache import tokenize_prompts
from rlf.tasks.schema import read_jsonl
from rlf.model import loop_targets
from rlf.train import load_run, target_ids_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    run = load_run(args.run)
    model, cfg = run.model, run.config
    if model.cfg.core != "transformer" or model.cfg.loop_span != "answer":
        raise SystemExit(f"{args.run}: needs core=transformer loop_span=answer")
    examples = read_jsonl(args.data)[: args.n]
    prompts = [ex.prompt for ex in examples]
    x, lengths, extra = run.encode_with_ids(prompts)
    ids = tokenize_prompts(run.base, cfg.template, prompts)
    tids = target_ids_of(examples, run.base.tokenizer, args.data)
    stop = run.base.tokenizer.convert_tokens_to_ids(".")

    seen = []  # the attention weights of every scaled_dot_product_attention call with a mask (recall's)
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            w = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~attn_mask, float("-inf")).softmax(-1)
            seen.append(w[:, :, 0])  # (B, heads, T + 1)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    n_layers = len(model.core.encoder.layers)
    L = max(map(len, tids))
    teacher = loop_targets(tids, model.halt_id, L + 1)
    transformer.F.scaled_dot_product_attention = recording
    try:
        with torch.no_grad():
            logits = model(x, lengths, L, teacher=teacher, **extra)  # teacher forcing: feedback=pointer only
    finally:
        transformer.F.scaled_dot_product_attention = sdpa
    parts = ("target", "full_stop", "statement_name", "equals", "self", "elsewhere", "target_best_head")
    sums = {f"layer{layer}_{kind}": dict.fromkeys((*parts, "n"), 0.0) for layer in range(n_layers)
            for kind in ("pointer", "answer")}
    for k in range(L):
        for layer in range(n_layers):
            heads = seen[k * n_layers + layer]  # (B, heads, T + 1): loop k's at this layer; column T is the loop's own
            w = heads.mean(1)
            for b, t in enumerate(tids):
                if k >= len(t):
                    continue
                row = ids[b]
                at = [j for j in range(len(row) - 1) if row[j] == t[k] and row[j + 1] == stop]
                if len(at) != 1:
                    continue  # not one statement naming it (cannot happen in generated chains)
                j = at[0]
                got = {"target": float(w[b, j]), "full_stop": float(w[b, j + 1]), "statement_name": float(w[b, j - 2]),
                       "equals": float(w[b, j - 1]), "self": float(w[b, -1])}
                got["elsewhere"] = 1 - sum(got.values())
                got["target_best_head"] = float(heads[b, :, j].max())
                s = sums[f"layer{layer}_{'answer' if k == len(t) - 1 else 'pointer'}"]
                for key, v in got.items():
                    s[key] += v
                s["n"] += 1
    # the copy read-out each head would give: the token at the position it attends to most (its own position: none),
    # right or not, against the model's own read-out (teacher-forced), per kind of loop
    copy = {f"{kind}_loop": {"n": 0, "read_out_right": 0, **{f"layer{layer}_head{h}_copy_right": 0
                                                              for layer in range(n_layers)
                                                              for h in range(seen[0].shape[1])}}
            for kind in ("pointer", "answer")}
    for k in range(L):
        for b, t in enumerate(tids):
            if k >= len(t):
                continue
            c = copy[f"{'answer' if k == len(t) - 1 else 'pointer'}_loop"]
            c["n"] += 1
            c["read_out_right"] += int(logits[b, k].argmax()) == t[k]
            for layer in range(n_layers):
                top = seen[k * n_layers + layer][b].argmax(-1)  # (heads,)
                for h, pos in enumerate(top.tolist()):
                    c[f"layer{layer}_head{h}_copy_right"] += pos < len(ids[b]) and ids[b][pos] == t[k]
    out = {"run": args.run, "data": args.data, "n_examples": len(examples),
           "mean_attention": {kind: {key: (round(v / s["n"], 4) if key != "n" else v) for key, v in s.items()}
                              for kind, s in sums.items()}}
    # read-outs that combine the two, scored on the same loops: the read-out restricted to the prompt's words and
    # <HALT>, and that restricted read-out's log-probabilities plus lam x the log of the best copy head's attention
    # mass on each word's positions (a product of experts; <HALT> gets the head's mass on no word, its own position)
    key = max((key for key in copy["answer_loop"] if key.endswith("copy_right")), key=lambda key: copy["answer_loop"][key])
    best_layer, best_head = int(key.split("_")[0][5:]), int(key.split("_")[1][4:])
    combos = {f"{kind}_loop": {"n": 0, "restricted": 0, **{f"poe_lam{lam}": 0 for lam in (0.5, 1, 2)}}
              for kind in ("pointer", "answer")}
    V = logits.shape[-1] - 1
    for k in range(L):
        att = seen[k * n_layers + best_layer][:, best_head]  # (B, T + 1)
        for b, t in enumerate(tids):
            if k >= len(t):
                continue
            c = combos[f"{'answer' if k == len(t) - 1 else 'pointer'}_loop"]
            c["n"] += 1
            row = torch.tensor(ids[b])
            words = torch.cat([row.unique(), torch.tensor([V])])  # the prompt's words and <HALT>
            logp = logits[b, k].float().log_softmax(-1)[words]
            c["restricted"] += int(words[logp.argmax()]) == t[k]
            mass = torch.zeros(len(words))
            mass.index_add_(0, torch.searchsorted(words[:-1], row), att[b, : len(row)].float())
            mass[-1] = att[b, -1]
            for lam in (0.5, 1, 2):
                c[f"poe_lam{lam}"] += int(words[(logp + lam * mass.clamp_min(1e-6).log()).argmax()]) == t[k]
    out["combined_read_outs"] = {"copy_head": key, **combos}
    out["copy_from_heads"] = copy
    for kind, c in copy.items():
        best = max((key for key in c if key.endswith("copy_right")), key=lambda key: c[key])
        out[f"{kind}_best_copy_head"] = {"head": best, "right": c[best], "read_out_right": c["read_out_right"],
                                         "n": c["n"]}
    print(json.dumps(out["mean_attention"]))
    print(json.dumps({k: v for k, v in out.items() if k.endswith("best_copy_head")}))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
