"""A training step with loop_span=all (every loop updates every position) against loop_span=answer (each loop
updates the answer position alone, against a memory of the prompt the core builds once), in the same run.

    python benchmarks/bench_loop_span.py [--steps 6] [--core mamba2] [--order backward --distractors 2]

Both models start from the same weights and see the same batches of cached encodings; the two alternate step by
step, so a change in the machine's load falls on both. Prints seconds/step, examples/s and the ratio, and loop 0's
largest logit difference (it must be ~0: loop 0 is the same model either way). Not part of the test suite.
"""

import argparse
import tempfile
import time

import torch

from rlf.base import load_base
from rlf.cache import encode_cached
from rlf.config import load_config
from rlf.tasks import generate, parse_hops
from rlf.train import batch_order, build_model, make_optimizer, target_ids_of

from bench_train_step import rlf_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--core", default="mamba2")
    ap.add_argument("--order", default="backward")
    ap.add_argument("--distractors", type=int, default=2)
    args = ap.parse_args()
    cfgs = {span: load_config("default", [f"core={args.core}", f"loop_span={span}", "loop_pos=none"])
            for span in ("all", "answer")}
    base = load_base(cfgs["all"].base, cfgs["all"].encoder_layers)
    examples = generate("chain", args.batch * args.steps, parse_hops("1-5"), 0, base.tokenizer, order=args.order,
                        distractors=args.distractors)
    tids = target_ids_of(examples, base.tokenizer, "bench")
    sizes = [len(t) for t in tids]
    with tempfile.TemporaryDirectory() as cache:
        enc = encode_cached(base, [ex.prompt for ex in examples], cache, cfgs["all"].template, progress=False)
        models = {span: build_model(cfg, base) for span, cfg in cfgs.items()}  # same seed: same initial weights
        models["answer"].load_state_dict(models["all"].state_dict())
        x, lengths = enc.batch(list(range(args.batch)))
        with torch.no_grad():
            gap = (models["all"](x, lengths, 1) - models["answer"](x, lengths, 1)).abs().max().item()
        opts = {span: make_optimizer(m, cfgs[span]) for span, m in models.items()}
        times: dict[str, list[float]] = {span: [] for span in models}
        for step in range(args.steps + 1):  # step 0 warms up
            idx = batch_order(sizes, args.batch, 0, step % args.steps)
            for span, model in models.items():
                t = time.perf_counter()
                rlf_step(model, opts[span], enc, tids, idx)
                times[span].append(time.perf_counter() - t)
    s = {span: sum(t[1:]) / args.steps for span, t in times.items()}
    print(f"core {args.core}, {args.order} chains 1-5 hops, distractors {args.distractors}, batch {args.batch}, "
          f"{args.steps} steps each, {torch.get_num_threads()} threads; loop 0 max |logit difference| {gap:.1e}")
    print(f"{'loop_span':<10} {'s/step':>8} {'examples/s':>11}")
    for span, sec in s.items():
        print(f"{span:<10} {sec:>8.2f} {args.batch / sec:>11.1f}")
    print(f"speed-up answer / all: {s['all'] / s['answer']:.1f}x")


if __name__ == "__main__":
    main()
