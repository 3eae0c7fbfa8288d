"""Where does a chain-prompt run's chaining fail: at the lookup, at the next lookup, or at the answer position? For
the first N val chains of a run, per loop k, the accuracy of loop k's target (step k + 1 of a chain: a name, or the
value word), among the loops that have one:

- `references`: every reference to an assigned name in the prompt, the prompt cut after it (the chain warm-up's
  queries, supervision=chains; its chain through the statements before it);
- `question name`: the question's own name token, the prompt cut after it (one of those queries);
- `answer position`: the task as trained and evaluated (the answer position of the run's template);
- `answer, oracle input`: the same, but from loop 1 on the loop's input is not its own output: it is the encoder's
  state of the token where the prompt refers to the name the loop must look up (the right-hand side of
  `N_k-1 = N_k.`), the input a reference query starts from. If this row is far above the one before, turning the
  loop's output back into a key is what fails.

    python benchmarks/chain_depth_probe.py RUN [--n 300] [--loops 5]

Prints counts and rates. Not a test.
"""

import argparse
from pathlib import Path

import torch

from rlf.cache import apply_template
from rlf.model import IGNORE, loop_targets
from rlf.tasks import read_jsonl
from rlf.tasks.chain import _STATEMENT as STATEMENT
from rlf.train import chain_batch, load_run, reference_chains, target_ids_of


def tally(logits: torch.Tensor, targets: torch.Tensor, halt_id: int, loops: int) -> list[tuple[int, int]]:
    """(hits, count) per loop over the targets that are a chain step (not <HALT>, not unsupervised)."""
    top = logits.argmax(-1)
    out = []
    for k in range(min(loops, targets.shape[1])):
        real = (targets[:, k] >= 0) & (targets[:, k] != halt_id)
        out.append((int((top[:, k] == targets[:, k])[real].sum()), int(real.sum())))
    return out


def oracle_refs(examples, tokenizer, template: str) -> list[list[int]]:
    """Per example, the token index of the prompt's reference to each of its trace's names (the token ending
    'N = name.'), in trace order."""
    refs = []
    for ex in examples:
        text = apply_template(template, ex.prompt)
        ends = torch.tensor([end for _, end in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]])
        rhs = {m.group(2): m.end(2) for m in STATEMENT.finditer(text)}
        refs.append([int(torch.searchsorted(ends, torch.tensor(rhs[w]))) for w in ex.targets[:-1]])
    return refs


def oracle_input(x: torch.Tensor, refs: list[list[int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop k's oracle input (B, d): the encoder's state at the prompt's reference to the trace's name k - 1
    (`oracle_refs`; past a trace's names, the state at token 0), and which rows have such a name (B,)."""
    has = torch.tensor([k - 1 < len(r) for r in refs])
    pos = torch.tensor([r[k - 1] if k - 1 < len(r) else 0 for r in refs])
    return x[torch.arange(len(refs)), pos], has


def fed_logits(model, x, lengths, loops: int, feed) -> torch.Tensor:
    """Per-loop logits (B, loops, V + 1) of a loop_span=answer model whose loop k >= 1 takes feed(k, state after
    loop k - 1) as its input in place of that state."""
    state, step, read = model._loop(x, lengths, model.lifeline_source(x, lengths, "intact", None))
    out = []
    for k in range(loops):
        if k >= 1:
            state = feed(k, state)
        state = step(state, k)
        out.append(model.head(read(state)))
    return torch.stack(out, 1)


def oracle_logits(model, x, lengths, refs: list[list[int]], loops: int) -> torch.Tensor:
    """Per-loop logits (B, loops, V + 1) with loop k >= 1 fed its `oracle_input`."""
    return fed_logits(model, x, lengths, loops, lambda k, state: oracle_input(x, refs, k)[0])


def chain_targets(tids: list[list[int]], halt_id: int) -> torch.Tensor:
    """(B, L) targets of the chain steps alone: each trace's ids, IGNORE after them (no <HALT> loop)."""
    t = loop_targets(tids, halt_id, max(map(len, tids)) + 1)[:, :-1]
    return t.masked_fill(t == halt_id, IGNORE)


def load_answer_span_run(path: str):
    """The run, refused unless its loop updates the answer position alone (the state an oracle input replaces)."""
    run = load_run(path, device="cpu")
    if run.model.cfg.loop_span != "answer":
        raise SystemExit(f"{path}: loop_span={run.model.cfg.loop_span}; these probes feed the answer position's "
                         "state, so they need a loop_span=answer run")
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--loops", type=int, default=5)
    args = ap.parse_args()
    run = load_answer_span_run(args.run)
    model, tok = run.model, run.base.tokenizer
    examples = read_jsonl(Path(args.run) / "val.jsonl")[: args.n]
    found = reference_chains(examples, tok, run.config.template, "probe", "chains")
    rows, pos, targets = chain_batch(found, model.halt_id)
    x, lengths = run.encode([ex.prompt for ex in examples])
    question = torch.tensor([len(p) for p, _, _ in found]).cumsum(0) - 1  # each prompt's last query
    tids = target_ids_of(examples, tok, "val")
    task_targets = chain_targets(tids, model.halt_id)
    L = task_targets.shape[1]
    with torch.no_grad():
        ref_logits = torch.cat([model(x[:, : int(pos[i : i + 256].max()) + 1], pos[i : i + 256] + 1, targets.shape[1],
                                      rows=rows[i : i + 256]) for i in range(0, len(rows), 256)])
        task_logits = model(x, lengths, L)
        oracle = oracle_logits(model, x, lengths, oracle_refs(examples, tok, run.config.template), L)
    results = {
        "references": tally(ref_logits, targets, model.halt_id, args.loops),
        "question name": tally(ref_logits[question], targets[question], model.halt_id, args.loops),
        "answer position": tally(task_logits, task_targets, model.halt_id, args.loops),
        "answer, oracle input": tally(oracle, task_targets, model.halt_id, args.loops),
    }
    print(f"{args.run}: {len(examples)} val chains, {len(rows)} reference queries; loop k = chain step k + 1")
    print(f"{'queries':<22}" + "".join(f"{'loop ' + str(k):>16}" for k in range(args.loops)))
    for name, per_loop in results.items():
        cells = [f"{h}/{n} {h / n:.1%}" if n else "-" for h, n in per_loop]
        print(f"{name:<22}" + "".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
