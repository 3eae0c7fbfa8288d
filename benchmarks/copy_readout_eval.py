"""Whole traces, run free, with inference-only read-outs for a Transformer-core chain run (no retraining).

    python benchmarks/copy_readout_eval.py RUN DATA.jsonl [DATA.jsonl ...] --head LAYER,HEAD [--lam 1] [--n N]

Each loop's word (and, with feedback=pointer, the softmax its next key is built from) comes from one of:
`read_out` (the model as trained), `restricted` (the read-out over the prompt's words and <HALT> only), `poe` (the
restricted read-out's log-probabilities plus lam x the log of attention head LAYER,HEAD's mass on each word's
positions at that loop; <HALT> gets the head's mass on the loop's own position). Scores trace accuracy (every
pointer, the answer, <HALT> at the right loop) and answer accuracy with Wilson intervals, as `rlf eval` does
(rlf.evaluate.score). Choose the head and lam on validation data (benchmarks/answer_attention.py), not on the sets
scored here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from rlf.cache import tokenize_prompts
from rlf.evaluate import score, summarize
from rlf.tasks.schema import read_jsonl
from rlf.train import load_run, pad_ids, target_ids_of

MODES = ("read_out", "restricted", "poe")


@contextlib.contextmanager
def recording_attention(core):
    """While active, each recall of the answer-span Transformer `core` (one per loop) appends its attention weights
    (B, layers, heads, T + 1; column T is the loop's own position) to the yielded list."""
    seen, recall = [], core.recall

    def recording(memory, a):
        out = recall(memory, a)
        seen.append(memory["attention"])
        return out

    core.recall = recording
    try:
        yield seen
    finally:
        del core.recall  # the class's method again


def encode(run, prompts: list[str]):
    """Encodings, lengths, the prompts' token ids (B, T; -1 past each end) and what the model takes beside them;
    the prompts are tokenised once (a feedback=pointer run's model inputs already hold the ids)."""
    x, lengths, extra = run.encode_with_ids(prompts)
    ids = extra.get("prompt_ids")
    if ids is None:
        ids = pad_ids(tokenize_prompts(run.base, run.config.template, prompts), x.shape[1])
    return x, lengths, ids, extra


def restricted_logp(z: torch.Tensor, ids: torch.Tensor, att: torch.Tensor | None = None, lam: float = 1.0):
    """Read-out logits z (B, V + 1; <HALT> last) as log-probabilities over the prompt's words and <HALT> only (the
    rest -inf); with `att` (B, T + 1), one head's attention at that loop, plus lam x log of its mass on each word's
    positions (<HALT>: its mass on the loop's own position)."""
    V = z.shape[-1] - 1
    allowed = torch.zeros_like(z, dtype=torch.bool).scatter_(1, ids.clamp_min(0), ids >= 0)
    allowed[:, V] = True
    logp = z.float().log_softmax(-1).masked_fill(~allowed, float("-inf"))
    if att is None:
        return logp
    mass = torch.zeros_like(logp).scatter_add_(1, ids.clamp_min(0), att[:, : ids.shape[1]].float() * (ids >= 0))
    mass[:, V] = att[:, -1]
    return logp + lam * mass.clamp_min(1e-6).log()


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
    plain_head, state = model.head, {}

    def head_fn(h):  # the read-out of the mode in `state`, at the loop whose attention was recorded last
        z = plain_head(h)
        if state["mode"] == "read_out":
            return z
        att = state["seen"][-1][:, layer, head] if state["mode"] == "poe" else None
        return restricted_logp(z, state["ids"], att, args.lam)

    out = {"run": args.run, "head": args.head, "lam": args.lam, "sets": {}}
    model.head = head_fn
    try:
        with recording_attention(model.core) as seen, torch.no_grad():
            for path in args.data:
                examples = read_jsonl(path)[: args.n]
                tids = target_ids_of(examples, run.base.tokenizer, path)
                tokens = {mode: [] for mode in MODES}
                for i in range(0, len(examples), args.batch):
                    x, lengths, ids, extra = encode(run, [ex.prompt for ex in examples[i : i + args.batch]])
                    limit = 2 * max(map(len, tids[i : i + args.batch])) + 2
                    for mode in MODES:
                        state.update(mode=mode, ids=ids, seen=seen)
                        seen.clear()
                        t = model.solve(x, lengths, limit, **extra)["tokens"].numpy()
                        tokens[mode] += [row for row in t]
                res = {}
                for mode in MODES:
                    s = summarize(score(tokens[mode], np.zeros((len(examples), 1)), tids, model.halt_id))
                    res[mode] = {"trace": s["trace_acc"], "answer": s["answer_acc"]}
                    print(Path(path).stem, mode, json.dumps(res[mode]))
                out["sets"][Path(path).stem] = res
    finally:
        model.head = plain_head
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
