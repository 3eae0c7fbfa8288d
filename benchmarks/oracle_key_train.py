"""Can a lookup be learnt from the answer position at all, when the key is given? Fine-tunes a copy of a run's model
on its training chains with the chain depth probe's oracle input in training too: from loop 1 on, each loop's input
is the encoder's state at the prompt's reference to the name it must look up (not its own output), and the loss is
each chain step's target (the <HALT> loops are left out). Every `--probe-every` steps it prints, on the first N val
chains, the per-loop accuracy of chain steps with that oracle input and with the loop's own output (the task).

If the oracle row climbs to the 58-70% a name token's own query reaches (benchmarks/chain_depth_probe.py), what
fails in the task is turning a loop's output into a key; if it stays low, the answer position's one recurrent step
over the prompt memory cannot do the lookup, whatever its input.

With --key-map a d x d map (zero at the start) also learns, by regression, to turn a loop's state into the oracle
input of the next loop, and the probe adds the task with each loop from the second fed the map of its own previous
state: the oracle's key, made from the loop's own output.

    python benchmarks/oracle_key_train.py RUN [--steps 600] [--train 3000] [--n 300] [--key-map] [--out FILE.json]

Writes nothing to RUN. Not a test.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from chain_depth_probe import (chain_targets, fed_logits, load_answer_span_run, oracle_input,  # noqa: E402
                               oracle_logits, oracle_refs, tally)

from rlf.cache import apply_template  # noqa: E402
from rlf.model import loop_loss  # noqa: E402
from rlf.tasks import read_jsonl  # noqa: E402
from rlf.train import target_ids_of  # noqa: E402


def mapped_logits(model, key_map, x, lengths, refs, loops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-loop logits (B, loops, V + 1) with loop k >= 1 fed key_map(its previous state), and the mean regression
    loss of those inputs to the loops' oracle inputs, each relative to its target's mean square."""
    errs = []

    def feed(k, state):
        want, has = oracle_input(x, refs, k)
        mapped = key_map(state)
        errs.append((mapped - want)[has].pow(2).mean() / want[has].pow(2).mean())
        return mapped

    return fed_logits(model, x, lengths, loops, feed), torch.stack(errs).mean()


def prompt_ids(examples, tokenizer, template: str, T: int) -> torch.Tensor:
    """(B, T) token ids of the templated prompts, -1 past each prompt's end."""
    out = torch.full((len(examples), T), -1, dtype=torch.long)
    for i, ex in enumerate(examples):
        ids = tokenizer(apply_template(template, ex.prompt))["input_ids"]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


RHS_ONLY = None  # with --rhs-only: the token id of "."; the pointer then weighs only positions followed by it


def pointer_input(model, x: torch.Tensor, ids: torch.Tensor, state: torch.Tensor, gate=None, hard=False
                  ) -> torch.Tensor:
    """The pointer key (B, d): the prompt's encoder states averaged with weights p(token at t), the probability the
    head gives, from `state`, to each position's own token; the states where the prompt holds the word the loop
    names."""
    p = model.head(state)[..., : model.cfg.vocab_size].softmax(-1)  # (B, V)
    if hard:  # the argmax word alone
        p = F.one_hot(p.argmax(-1), p.shape[-1]).to(p)
    w = p.gather(1, ids.clamp_min(0)) * (ids >= 0)  # (B, T)
    if RHS_ONLY is not None:  # a diagnostic: the right-hand sides of statements alone (the oracle's positions)
        w = w * F.pad(ids[:, 1:] == RHS_ONLY, (0, 1))
    if gate is not None:  # a learned weight per position, from its own encoder state
        w = w * torch.sigmoid(gate(x)).squeeze(-1)
    return torch.einsum("bt,btd->bd", w / w.sum(1, keepdim=True).clamp_min(1e-9), x)


def pointer_logits(model, x, lengths, ids, loops: int, gate=None, hard=False) -> torch.Tensor:
    """Per-loop logits with loop k >= 1 fed the `pointer_input` of its previous state (end to end)."""
    return fed_logits(model, x, lengths, loops, lambda k, state: pointer_input(model, x, ids, state, gate, hard))


def teacher_logits(model, x, lengths, ids, targets: torch.Tensor, gate=None) -> torch.Tensor:
    """Per-loop logits with loop k >= 1 fed the pointer key of the right word (loop k - 1's target): teacher
    forcing of the pointer, whose keys need no statement parsing (every position holding the word)."""
    def feed(k, state):
        word = F.one_hot(targets[:, k - 1].clamp_min(0), model.cfg.vocab_size).float() * (targets[:, k - 1, None] >= 0)
        w = word.gather(1, ids.clamp_min(0)) * (ids >= 0)
        return torch.einsum("bt,btd->bd", w / w.sum(1, keepdim=True).clamp_min(1e-9), x)
    return fed_logits(model, x, lengths, targets.shape[1], feed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--train", type=int, default=3000, help="training chains used (the run's first N)")
    ap.add_argument("--n", type=int, default=300, help="val chains probed")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--probe-every", type=int, default=200)
    ap.add_argument("--out")
    ap.add_argument("--key-map", action="store_true", help="also train a d x d map from a loop's state to the oracle "
                    "input (regression), and probe the task with each loop fed the map of its own previous state")
    ap.add_argument("--train-feed", choices=("oracle", "pointer", "teacher"), default="oracle",
                    help="each loop from the second fed the oracle input, or the pointer key of its own output")
    ap.add_argument("--rhs-only", action="store_true", help="diagnostic: pointer weights only at positions before '.'")
    ap.add_argument("--gate", action="store_true", help="pointer weights times a learned gate of each position")
    args = ap.parse_args()
    run = load_answer_span_run(args.run)
    model, tok, template = run.model, run.base.tokenizer, run.config.template
    if args.rhs_only:
        global RHS_ONLY
        (RHS_ONLY,) = tok(".")["input_ids"]
    sets = {}
    for name, n in (("train", args.train), ("val", args.n)):
        ex = read_jsonl(Path(args.run) / f"{name}.jsonl")[:n]
        parts = [run.encode([e.prompt for e in ex[i : i + 500]]) for i in range(0, len(ex), 500)]
        lengths = torch.cat([n for _, n in parts])
        x = torch.zeros(len(ex), int(lengths.max()), parts[0][0].shape[-1])
        for i, (xi, _) in enumerate(parts):
            x[i * 500 : i * 500 + len(xi), : xi.shape[1]] = xi
        tids = target_ids_of(ex, tok, name)
        sets[name] = (x.float(), lengths, oracle_refs(ex, tok, template), chain_targets(tids, model.halt_id),
                      prompt_ids(ex, tok, template, x.shape[1]))
    params = [p for p in model.parameters() if p.requires_grad]
    if args.key_map:
        d = sets["val"][0].shape[-1]
        key_map = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(key_map.weight)
        torch.nn.init.zeros_(key_map.bias)
        params += list(key_map.parameters())
    gate = None
    if args.gate:
        gate = torch.nn.Linear(sets["val"][0].shape[-1], 1)
        torch.nn.init.zeros_(gate.weight)
        torch.nn.init.zeros_(gate.bias)
        params += list(gate.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    log, t0 = [], time.perf_counter()

    def probe(step: int) -> None:
        x, lengths, refs, targets, ids = sets["val"]
        model.eval()
        with torch.no_grad():
            rows = {"oracle input": tally(oracle_logits(model, x, lengths, refs, targets.shape[1]), targets,
                                          model.halt_id, 5),
                    "own output": tally(model(x, lengths, targets.shape[1]), targets, model.halt_id, 5),
                    "pointer key": tally(pointer_logits(model, x, lengths, ids, targets.shape[1], gate), targets,
                                         model.halt_id, 5),
                    "pointer, argmax": tally(pointer_logits(model, x, lengths, ids, targets.shape[1], gate, True),
                                             targets, model.halt_id, 5)}
            if args.key_map:
                rows["mapped own output"] = tally(mapped_logits(model, key_map, x, lengths, refs, targets.shape[1])[0],
                                                  targets, model.halt_id, 5)
        model.train()
        log.append({"step": step, "seconds": round(time.perf_counter() - t0, 1), **rows})
        print(f"step {step} ({log[-1]['seconds']} s): " + "; ".join(
            f"{k}: " + " ".join(f"{h}/{n}" for h, n in v) for k, v in rows.items()), flush=True)

    probe(0)
    x_all, len_all, refs_all, t_all, ids_all = sets["train"]
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(refs_all), (args.batch,), generator=g)
        T = int(len_all[idx].max())
        refs = [refs_all[i] for i in idx]
        if args.train_feed == "oracle":
            logits = oracle_logits(model, x_all[idx, :T], len_all[idx], refs, t_all.shape[1])
        elif args.train_feed == "teacher":
            logits = teacher_logits(model, x_all[idx, :T], len_all[idx], ids_all[idx, :T], t_all[idx], gate)
        else:
            logits = pointer_logits(model, x_all[idx, :T], len_all[idx], ids_all[idx, :T], t_all.shape[1], gate)
        loss, _ = loop_loss(logits, t_all[idx])
        if args.key_map:  # the map learns from the model's own states; the task loss keeps the oracle input
            _, err = mapped_logits(model, key_map, x_all[idx, :T], len_all[idx], refs, t_all.shape[1])
            loss = loss + err
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"  step {step} loss {loss.item():.3f}", flush=True)
        if step % args.probe_every == 0:
            probe(step)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "probes": log}, indent=1))


if __name__ == "__main__":
    main()
