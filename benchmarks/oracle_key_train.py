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

The probe also feeds each loop from the second the pointer key of its previous loop's word (`RLFModel.pointer_key`,
feedback=pointer: the encoder's states at the prompt positions holding that word, weighed by the loop's softmax, or
by its argmax alone). `--train-feed` chooses what the fine-tune feeds those loops: the oracle input (default), the
pointer key of the loop's own softmax (end to end), or the pointer key of the right word (`teacher`, teacher forcing).

    python benchmarks/oracle_key_train.py RUN [--steps 600] [--train 3000] [--n 300] [--key-map]
                                              [--train-feed oracle|pointer|teacher] [--out FILE.json]

Writes nothing to RUN. Not a test.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from chain_depth_probe import (chain_targets, fed_logits, load_answer_span_run, oracle_input,  # noqa: E402
                               oracle_logits, oracle_refs, tally)

from rlf.cache import tokenize_prompts  # noqa: E402
from rlf.model import loop_loss  # noqa: E402
from rlf.tasks import read_jsonl  # noqa: E402
from rlf.train import pad_ids, target_ids_of  # noqa: E402


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


def pointer_logits(model, x, lengths, ids, loops: int, hard: bool = False) -> torch.Tensor:
    """Per-loop logits with loop k >= 1 fed `RLFModel.pointer_key` of its previous loop's softmax (feedback=pointer
    at inference), or with `hard` of its argmax word alone."""
    def feed(k, state):
        logits = model.head(state)
        word = logits.argmax(-1) if hard else logits[..., : model.cfg.vocab_size].softmax(-1)
        return model.pointer_key(x, ids, lengths, word)
    return fed_logits(model, x, lengths, loops, feed)


def teacher_logits(model, x, lengths, ids, targets: torch.Tensor) -> torch.Tensor:
    """Per-loop logits with loop k >= 1 fed the pointer key of the right word, loop k - 1's target (feedback=pointer
    in training: teacher forcing)."""
    return fed_logits(model, x, lengths, targets.shape[1],
                      lambda k, state: model.pointer_key(x, ids, lengths, targets[:, k - 1]))


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
    args = ap.parse_args()
    run = load_answer_span_run(args.run)
    model, tok, template = run.model, run.base.tokenizer, run.config.template
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
                      pad_ids(tokenize_prompts(run.base, template, [e.prompt for e in ex]), x.shape[1]))
    params = [p for p in model.parameters() if p.requires_grad]
    if args.key_map:
        d = sets["val"][0].shape[-1]
        key_map = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(key_map.weight)
        torch.nn.init.zeros_(key_map.bias)
        params += list(key_map.parameters())
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
                    "pointer key": tally(pointer_logits(model, x, lengths, ids, targets.shape[1]), targets,
                                         model.halt_id, 5),
                    "pointer, argmax": tally(pointer_logits(model, x, lengths, ids, targets.shape[1], True),
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
            logits = teacher_logits(model, x_all[idx, :T], len_all[idx], ids_all[idx, :T], t_all[idx])
        else:
            logits = pointer_logits(model, x_all[idx, :T], len_all[idx], ids_all[idx, :T], t_all.shape[1])
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
