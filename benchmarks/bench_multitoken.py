"""Training step time with K read-out slots per loop (target_tokens = 1, 2, 4) on the same data, as ratios to K = 1.

    python benchmarks/bench_multitoken.py [--steps 24] [--base smollm2-135m] [--core mamba2] [--slots 1,2,4]

Every K trains the same model (same base, encoder_layers, core, initial weights: the slot maps start at zero) on the
same batches of forward chains (single-token targets, so every K can train on them; with K > 1 each loop's target
is its token and the end marker) with the same optimizer. The K's take turns step by step, so a change in the
machine's load falls on all of them; the first 2 steps of each are warm-up and not timed. Prints the median
seconds per step of each K and its ratio to K = 1 measured in this run. Not part of the test suite.
"""

import argparse
import statistics
import time

import torch

from rlf.base import load_base
from rlf.cache import encode_cached
from rlf.config import load_config
from rlf.model import loop_loss, loop_targets, loops_needed
from rlf.tasks import generate, parse_hops
from rlf.train import batch_order, build_model, make_optimizer, target_ids_of

WARMUP = 2


def train_step(model, opt, x, lengths, tids) -> None:
    """One training step as `rlf.train.train` takes it: the loop, the vectorised loss over batch, loops and slots."""
    n_loops = loops_needed(tids, extra=1)
    targets = loop_targets(tids, model.halt_id, n_loops, slots=model.cfg.target_tokens)
    loss, _ = loop_loss(model(x, lengths, n_loops), targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24, help="timed steps per K")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--encoder-layers", type=int, default=6)
    ap.add_argument("--core", default="mamba2")
    ap.add_argument("--slots", default="1,2,4", help="the K's to compare; the first is the baseline")
    args = ap.parse_args()
    slots = [int(k) for k in args.slots.split(",")]
    cfg = load_config("default", [f"base={args.base}", f"encoder_layers={args.encoder_layers}", f"core={args.core}"])
    base = load_base(cfg.base, cfg.encoder_layers)
    steps = args.steps + WARMUP
    examples = generate("chain", args.batch * steps, parse_hops("1-5"), 0, base.tokenizer, order="forward")
    enc = encode_cached(base, [ex.prompt for ex in examples], cfg.cache_dir, cfg.template, cfg.storage)
    ids = {k: target_ids_of(examples, base.tokenizer, "bench", k) for k in slots}
    sizes = [len(t) for t in ids[slots[0]]]
    runs = {}
    for k in slots:
        kcfg = load_config("default", [f"base={args.base}", f"encoder_layers={args.encoder_layers}",
                                       f"core={args.core}", f"target_tokens={k}"])
        model = build_model(kcfg, base)
        runs[k] = (model, make_optimizer(model, kcfg), [])
    for step in range(steps):
        idx = batch_order(sizes, args.batch, 0, step)
        x, lengths = enc.batch(idx)
        for k, (model, opt, times) in runs.items():
            t0 = time.perf_counter()
            train_step(model, opt, x, lengths, [ids[k][i] for i in idx])
            if step >= WARMUP:
                times.append(time.perf_counter() - t0)
    print(f"base {args.base} (encoder_layers={args.encoder_layers}), core {args.core}, batch {args.batch}, "
          f"{args.steps} timed steps each, {torch.get_num_threads()} threads")
    ref = statistics.median(runs[slots[0]][2])
    print(f"{'K':>3}  {'s/step':>8}  {'ratio':>6}  {'extra parameters':>16}")
    for k, (model, _, times) in runs.items():
        med = statistics.median(times)
        extra = model.slot_maps.numel() if k > 1 else 0
        print(f"{k:>3}  {med:>8.3f}  {med / ref:>6.2f}  {extra:>16,}")


if __name__ == "__main__":
    main()
