"""Training throughput of rlf's pipeline against a faithful re-creation of the seeds' training recipe.

    python benchmarks/bench_train_step.py [--steps 6] [--base smollm2-135m] [--core mamba2]

Both sides train the same model (same base, encoder_layers, core, initial weights) on the same examples
with the same optimizer, in this one run:
- seed-style: the frozen base re-run on every batch, the LM head applied to every position at every loop,
  and the loss computed with a Python loop over examples (as in the research scripts);
- rlf: encodings read from the on-disk cache (built once, timed separately), the head applied only at
  the answer position, one vectorised cross-entropy over (batch, loops), batches bucketed by loop count.
The two alternate step by step, so a change in the machine's load falls on both. Prints seconds/step and
examples/s for each and the ratio. Not part of the test suite.
"""

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from rlf.base import load_base
from rlf.cache import apply_template, encode_cached
from rlf.config import load_config
from rlf.model import loop_loss, loop_targets, loops_needed
from rlf.tasks import generate, parse_hops
from rlf.train import batch_order, build_model, make_optimizer, target_ids_of


def seed_style_step(model, base, opt, examples, tids, template):
    """One step the way the seeds' scripts do it."""
    texts = [apply_template(template, ex.prompt) for ex in examples]
    with torch.no_grad():
        x_prompt, lengths = base.encode(texts)  # the frozen base, every step
    n_loops = loops_needed(tids, extra=1)
    source = x_prompt
    x, _ = model._start(x_prompt, lengths)
    all_logits = []
    for i in range(n_loops):
        x = model.step(x, source, i)
        all_logits.append(model.head(x))  # LM head over every position: (B, T, V + 1)
    loss = 0.0
    for b, t in enumerate(tids):  # Python loop over examples
        target = loop_targets([t], model.halt_id, n_loops)[0]
        pos = int(lengths[b]) - 1
        for i in range(n_loops):
            loss = loss + F.cross_entropy(all_logits[i][b, pos][None], target[i][None])
    loss = loss / (len(tids) * n_loops)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def rlf_step(model, opt, enc, tids, idx):
    x, lengths = enc.batch(idx)
    t = [tids[i] for i in idx]
    n_loops = loops_needed(t, extra=1)
    loss, _ = loop_loss(model(x, lengths, n_loops), loop_targets(t, model.halt_id, n_loops))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--encoder-layers", type=int, default=6)
    ap.add_argument("--core", default="mamba2")
    args = ap.parse_args()
    cfg = load_config("default", [f"base={args.base}", f"encoder_layers={args.encoder_layers}", f"core={args.core}"])
    base = load_base(cfg.base, cfg.encoder_layers)
    n = args.batch * args.steps
    examples = generate("chain", n, parse_hops("1-5"), 0, base.tokenizer, order="forward")
    tids = target_ids_of(examples, base.tokenizer, "bench")
    sizes = [len(t) for t in tids]

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        enc = encode_cached(base, [ex.prompt for ex in examples], cache, cfg.template, progress=False)
        encode_s = time.perf_counter() - t
        models = {name: build_model(cfg, base) for name in ("seed-style", "rlf")}  # same seed: same initial weights
        opts = {name: make_optimizer(m, cfg) for name, m in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for step in range(args.steps + 1):  # step 0 warms up; the two pipelines alternate, so load drift hits both
            idx = batch_order(sizes, args.batch, 0, step % args.steps)
            for name, model in models.items():
                t = time.perf_counter()
                if name == "rlf":
                    rlf_step(model, opts[name], enc, tids, idx)
                else:
                    seed_style_step(model, base, opts[name], [examples[i] for i in idx], [tids[i] for i in idx],
                                    cfg.template)
                times[name].append(time.perf_counter() - t)
    results = {name: sum(t[1:]) / args.steps for name, t in times.items()}
    print(f"base {args.base} (encoder_layers {args.encoder_layers}), core {args.core}, batch {args.batch}, "
          f"{args.steps} steps each, forward chains 1-5 hops, {torch.get_num_threads()} threads")
    print(f"{'pipeline':<12} {'s/step':>8} {'examples/s':>11}")
    for name, s in results.items():
        print(f"{name:<12} {s:>8.2f} {args.batch / s:>11.1f}")
    print(f"speed-up rlf / seed-style: {results['seed-style'] / results['rlf']:.1f}x "
          f"(one-off encoding of these {n} prompts: {encode_s:.1f} s, reused every later epoch and run)")


if __name__ == "__main__":
    main()
