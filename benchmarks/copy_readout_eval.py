"""Whole traces, run free, with inference-only read-outs for a Transformer-core chain run (no retraining).

    python benchmarks/copy_readout_eval.py RUN DATA.jsonl [DATA.jsonl ...] --head LAYER,HEAD [--lam 1] [--n N]

Each loop's word (and, with feedback=pointer, the softmax its next key is built from) comes from one of:
`read_out` (the model as trained), `restricted` (the read-out over the prompt's words and <HALT> only), `poe` (the
restricted read-out's log-probabilities plus lam x the log of attention head LAYER,HEAD's mass on each word's
positions at that loop; <HALT> gets the head's mass on the loop's own position). Scores trace accuracy (every
pointer, the answer, <HALT> at the right loop) and answer accuracy with Wilson intervals. Choose the head and lam
on validation data (benchmarks/answer_attention.py), not on the sets scored here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import rlf.cores.transformer as transformer
from rlf.evaluate import rate
from rlf.tasks.schema import read_jsonl
from rlf.train import load_run, target_ids_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("data", nargs="+")
    ap.add_argument("--head", required=True, help="LAYER,HEAD of the copy head")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    layer, head = map(int, args.head.split(","))
    run = load_run(args.run)
    model = run.model
    n_layers = len(model.core.encoder.layers)
    V = model.cfg.vocab_size
    sdpa, seen = F.scaled_dot_product_attention, []

    def recording(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            seen.append((q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~attn_mask, float("-inf"))
                        .softmax(-1)[:, head, 0])  # (B, T + 1)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    plain_head, state = model.head, {}

    def head_fn(h):
        z = plain_head(h)
        if state["mode"] == "read_out":
            return z
        logp = z.float().log_softmax(-1).masked_fill(~state["allowed"], float("-inf"))
        if state["mode"] == "poe":
            att = seen[-n_layers + layer]  # this loop's attention at LAYER
            ids = state["ids"]
            mass = torch.zeros_like(logp).scatter_add_(1, ids.clamp_min(0), att[:, : ids.shape[1]] * (ids >= 0))
            mass[:, V] = att[:, -1]
            logp = logp + args.lam * mass.clamp_min(1e-6).log()
        return logp

    out = {"run": args.run, "head": args.head, "lam": args.lam, "sets": {}}
    transformer.F.scaled_dot_product_attention = recording
    model.head = head_fn
    try:
        for path in args.data:
            examples = read_jsonl(path)[: args.n]
            tids = target_ids_of(examples, run.base.tokenizer, path)
            res = {}
            for mode in ("read_out", "restricted", "poe"):
                trace = answer = 0
                for i in range(0, len(examples), args.batch):
                    batch, t = examples[i : i + args.batch], tids[i : i + args.batch]
                    x, lengths, extra = run.encode_with_ids([ex.prompt for ex in batch])
                    ids = extra.get("prompt_ids")
                    allowed = torch.zeros(len(batch), V + 1, dtype=torch.bool)
                    allowed.scatter_(1, ids.clamp_min(0), ids >= 0)
                    allowed[:, V] = True
                    state.update(mode=mode, allowed=allowed, ids=ids)
                    seen.clear()
                    with torch.no_grad():
                        got = model.solve(x, lengths, max(map(len, t)) * 2 + 2, **extra)["tokens"]
                    for b, want in enumerate(t):
                        row = got[b].tolist() + [V] * (len(want) + 1)
                        trace += row[: len(want) + 1] == [*want, V]
                        answer += row[len(want) - 1] == want[-1]
                res[mode] = {"trace": rate(trace, len(examples)), "answer": rate(answer, len(examples))}
                print(Path(path).stem, mode, json.dumps(res[mode]))
            out["sets"][Path(path).stem] = res
    finally:
        transformer.F.scaled_dot_product_attention = sdpa
        model.head = plain_head
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
