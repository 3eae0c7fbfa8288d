"""bf16=true against float32 on this machine: a preset's encoding and its teacher-forced task training step.

    python benchmarks/bench_bf16.py [--preset pointer] [--n 256] [--rounds 3] [--steps 3]

Encoding: the preset's own prompts (its template), batches of 32 by length as the cache builds them, with the base in
float32 and under bfloat16 autocast (what `encode_cached(..., bf16=True)` does), alternating round by round; prints
prompts/s for each, the ratio, and the bf16 encoding's relative error per prompt position against float32 (mean, 99th
percentile, max), beside the error the float16 cache storage itself adds. Training: one batch of 32 of the preset's
task chains, the same model and optimizer, a step in float32 and a step under autocast alternating; prints median
seconds per step and the ratio. A CPU with AVX512-BF16 (or a GPU) is where bf16 pays; elsewhere it can be slower.
Not part of the test suite. The accuracy of a model trained with bf16 is measured by training it (docs/experiments).
"""

import argparse
import statistics
import tempfile
import time

import torch

from rlf.base import load_base
from rlf.cache import apply_template, encode_cached, tokenize_prompts
from rlf.config import load_config
from rlf.model import loop_loss, loop_targets, loops_needed
from rlf.tasks import generate, parse_hops
from rlf.train import build_model, chain_options, make_optimizer, pad_ids, target_ids_of


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="pointer")
    ap.add_argument("--n", type=int, default=256, help="prompts encoded per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per round and side")
    args = ap.parse_args()
    cfg = load_config(args.preset)
    base = load_base(cfg.base, cfg.encoder_layers)
    examples = generate(cfg.task, args.n, parse_hops(cfg.hops), cfg.seed, base.tokenizer, **chain_options(cfg))
    ids = sorted(base.tokenize([apply_template(cfg.template, ex.prompt) for ex in examples]), key=len, reverse=True)
    batches = [ids[i : i + 32] for i in range(0, len(ids), 32)]

    def encode(bf16: bool) -> tuple[list[torch.Tensor], float]:
        t = time.perf_counter()
        out = [base.encode_ids(b, bf16)[0] for b in batches]
        return out, time.perf_counter() - t

    encode(False)  # warm-up
    secs: dict[bool, list[float]] = {False: [], True: []}
    outs: dict[bool, list[torch.Tensor]] = {}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            outs[bf16], s = encode(bf16)
            secs[bf16].append(s)
    err, f16 = [], []
    for a, b, rows in zip(outs[False], outs[True], batches):
        valid = torch.arange(a.shape[1])[None, :] < torch.tensor([len(r) for r in rows])[:, None]
        norm = a.norm(dim=-1)[valid]
        err.append((a - b).norm(dim=-1)[valid] / norm)
        f16.append((a.half().float() - a).norm(dim=-1)[valid] / norm)
    err_all, f16_all = torch.cat(err), torch.cat(f16)
    rate = {k: args.n / statistics.median(v) for k, v in secs.items()}
    print(f"preset {args.preset}: {args.n} prompts ({sum(map(len, ids))} tokens), {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds per side")
    print(f"encode  float32 {rate[False]:.1f} prompts/s   bf16 {rate[True]:.1f} prompts/s   "
          f"bf16 / float32: {rate[True] / rate[False]:.2f}x")
    print(f"bf16 encoding's relative error per position: mean {err_all.mean():.4f}, p99 {err_all.quantile(0.99):.4f}, "
          f"max {err_all.max():.4f} (float16 storage alone: mean {f16_all.mean():.5f})")

    batch = examples[:32]
    prompts = [ex.prompt for ex in batch]
    with tempfile.TemporaryDirectory() as tmp:
        enc = encode_cached(base, prompts, tmp, cfg.template, cfg.storage, progress=False)
        x, lengths = enc.batch(list(range(len(batch))))
    tids = target_ids_of(batch, base.tokenizer, "bench")
    model = build_model(cfg, base)
    opt = make_optimizer(model, cfg)
    n = loops_needed(tids)
    targets = loop_targets(tids, model.halt_id, n)
    extra = ({"prompt_ids": pad_ids(tokenize_prompts(base, cfg.template, prompts), x.shape[1]), "teacher": targets}
             if cfg.feedback == "pointer" else {})

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, lengths, n, **extra)
        loss, _ = loop_loss(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            step(bf16)  # warm-up
            times[bf16] += [step(bf16) for _ in range(args.steps)]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"train step (32 chains, prompt width {x.shape[1]}, {n} loops): float32 {med[False]:.3f} s   "
          f"bf16 {med[True]:.3f} s   float32 / bf16: {med[False] / med[True]:.2f}x")


if __name__ == "__main__":
    main()
