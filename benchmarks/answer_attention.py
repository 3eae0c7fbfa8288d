"""Where a Transformer core's loops look: each attention layer's weights at each loop of chain prompts.

    python benchmarks/answer_attention.py RUN DATA.jsonl [--n N] [-o OUT.json]

For a `core=transformer loop_span=answer` run on chain prompts (statements `X = Y.`), loops the first N examples of
DATA teacher-forced, as training does (feedback=pointer: loop k is fed the key of target k - 1), and reads the
attention from the answer position at each loop. For each loop's target word T, at its position j in the statement
that names it (`N = T.`: the position holding T with `.` after it), separately for the pointer loops (T a name) and
the answer loop (T the value word):
- per layer, the attention (mean over heads) on j, on the full stop j + 1, on j - 2 (the name N; its second token if
  it has two) and j - 1 (`=`), on the loop's own position, and elsewhere; and the attention on j of the head that
  puts the most there (`target_best_head`);
- per head, how often the position it attends to most holds T (the copy read-out that head would give), beside
  how often the model's own read-out is right;
- with the best such head for the answer loop, how often the read-outs of benchmarks/copy_readout_eval.py are right
  (restricted to the prompt's words and <HALT>; that plus lam x log of the head's mass per word, lam 0.5 / 1 / 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from copy_readout_eval import encode, recording_attention, restricted_logp
from rlf.model import loop_targets
from rlf.tasks.schema import read_jsonl
from rlf.train import load_run, target_ids_of

PARTS = ("target", "full_stop", "statement_name", "equals", "self")
LAMS = (0.5, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    run = load_run(args.run)
    model = run.model
    if model.cfg.core != "transformer" or model.cfg.loop_span != "answer":
        raise SystemExit(f"{args.run}: needs core=transformer loop_span=answer")
    examples = read_jsonl(args.data)[: args.n]
    x, lengths, ids, extra = encode(run, [ex.prompt for ex in examples])
    tids = target_ids_of(examples, run.base.tokenizer, args.data)
    stop = run.base.tokenizer.convert_tokens_to_ids(".")
    L = max(map(len, tids))
    with recording_attention(model.core) as seen, torch.no_grad():
        logits = model(x, lengths, L, teacher=loop_targets(tids, model.halt_id, L + 1), **extra)
    n_layers = len(model.core.encoder.layers)
    att = torch.stack(seen).transpose(1, 2)  # (loops, layers, B, heads, T + 1)

    # every supervised (loop, example) pair: its kind and its target's position j (one statement names each word)
    B = len(examples)
    pairs = [(k, b, "answer" if k == len(t) - 1 else "pointer") for k in range(L) for b, t in enumerate(tids)
             if k < len(t)]
    j = torch.tensor([int(((ids[b, :-1] == tids[b][k]) & (ids[b, 1:] == stop)).nonzero().item()) for k, b, _ in pairs])
    k_, b_ = torch.tensor([k for k, _, _ in pairs]), torch.tensor([b for _, b, _ in pairs])
    target = torch.tensor([tids[b][k] for k, b, _ in pairs])
    heads = att[k_, :, b_]  # (P, layers, heads, T + 1)
    mean = heads.mean(2)  # (P, layers, T + 1)
    at = lambda offset: mean.gather(2, (j + offset)[:, None, None].expand(-1, n_layers, 1))[..., 0]  # noqa: E731
    parts = {"target": at(0), "full_stop": at(1), "statement_name": at(-2), "equals": at(-1), "self": mean[..., -1]}
    parts["elsewhere"] = 1 - sum(parts.values())
    parts["target_best_head"] = heads.gather(3, j[:, None, None, None].expand(-1, n_layers, heads.shape[2], 1)
                                             )[..., 0].max(-1).values
    read_out_right = logits[b_, k_].argmax(-1) == target
    top = heads.argmax(-1).clamp_max(ids.shape[1] - 1)  # (P, layers, heads): a head's most-attended position
    copy_right = (ids[b_][:, None, None, :].expand(-1, n_layers, heads.shape[2], -1).gather(3, top[..., None])[..., 0]
                  == target[:, None, None]) & (heads.argmax(-1) < ids.shape[1])

    kinds = {kind: torch.tensor([kd == kind for _, _, kd in pairs]) for kind in ("pointer", "answer")}
    out = {"run": args.run, "data": args.data, "n_examples": B, "mean_attention": {}, "copy_from_heads": {}}
    for kind, sel in kinds.items():
        for layer in range(n_layers):
            out["mean_attention"][f"layer{layer}_{kind}"] = {
                **{name: round(float(v[sel, layer].mean()), 4) for name, v in parts.items()}, "n": int(sel.sum())}
        counts = copy_right[sel].sum(0)  # (layers, heads)
        best = divmod(int(counts.argmax()), counts.shape[1])
        out["copy_from_heads"][f"{kind}_loop"] = {"n": int(sel.sum()), "read_out_right": int(read_out_right[sel].sum()),
                                                  "right_per_layer_head": counts.tolist(),
                                                  "best_head": list(best), "best_head_right": int(counts.max())}
    layer, head = out["copy_from_heads"]["answer_loop"]["best_head"]
    z, a = logits[b_, k_], heads[:, layer, head]
    combined = {"restricted": restricted_logp(z, ids[b_]).argmax(-1) == target,
                **{f"poe_lam{lam}": restricted_logp(z, ids[b_], a, lam).argmax(-1) == target for lam in LAMS}}
    out["combined_read_outs"] = {"copy_head": [layer, head], **{
        f"{kind}_loop": {"n": int(sel.sum()), **{name: int(right[sel].sum()) for name, right in combined.items()}}
        for kind, sel in kinds.items()}}
    print(json.dumps(out["mean_attention"]))
    print(json.dumps({kind: {k: v for k, v in c.items() if k != "right_per_layer_head"}
                      for kind, c in out["copy_from_heads"].items()}))
    print(json.dumps(out["combined_read_outs"]))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
