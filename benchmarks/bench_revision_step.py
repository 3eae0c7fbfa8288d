"""A preset's task training step in this working tree against the same step at another git revision.

    python benchmarks/bench_revision_step.py [--against HEAD~1] [--preset pointer] [--rounds 4] [--steps 3]

Both sides train the same model (the preset's config, its core freshly initialised with the same seed) on the same
batch of 32 of the preset's own task chains, teacher-forced, with AdamW: the encodings are made once here and given to
both. The other revision is checked out into a temporary git worktree; each side runs in its own process with that
tree's `src` first on the path, and the two alternate round by round (one warm-up step, then `--steps` timed steps),
so a change in the machine's load falls on both. Prints each side's median seconds per step and the ratio. Not part
of the test suite: it is how a change to the training step's arithmetic is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def child(batch_file: str, steps: int, preset: str) -> None:
    """Runs in the side's own process (its rlf first on sys.path): time `steps` training steps, print them as JSON."""
    from rlf.base import load_base
    from rlf.config import load_config
    from rlf.model import loop_loss, loop_targets, loops_needed
    from rlf.train import build_model, make_optimizer

    b = torch.load(batch_file)
    cfg = load_config(preset)
    base = load_base(cfg.base, cfg.encoder_layers)
    model = build_model(cfg, base)
    opt = make_optimizer(model, cfg)
    n = loops_needed(b["tids"])
    targets = loop_targets(b["tids"], model.halt_id, n)
    extra = {"prompt_ids": b["prompt_ids"], "teacher": targets} if cfg.feedback == "pointer" else {}
    times = []
    for _ in range(steps + 1):  # the first warms up
        t = time.perf_counter()
        loss, _ = loop_loss(model(b["x"], b["lengths"], n, **extra), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    print(json.dumps(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="HEAD", help="the git revision to compare this working tree with")
    ap.add_argument("--preset", default="pointer")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and side")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", nargs=2, metavar=("BATCH_FILE", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.preset)

    from rlf.base import load_base
    from rlf.cache import encode_cached, tokenize_prompts
    from rlf.config import load_config
    from rlf.tasks import generate, parse_hops
    from rlf.train import chain_options, pad_ids, target_ids_of

    cfg = load_config(args.preset)
    base = load_base(cfg.base, cfg.encoder_layers)
    examples = generate(cfg.task, args.batch, parse_hops(cfg.hops), cfg.seed, base.tokenizer, **chain_options(cfg))
    prompts = [ex.prompt for ex in examples]
    with tempfile.TemporaryDirectory() as tmp:
        enc = encode_cached(base, prompts, tmp, cfg.template, cfg.storage, progress=False)
        x, lengths = enc.batch(list(range(args.batch)))
        batch = {"x": x, "lengths": lengths, "tids": target_ids_of(examples, base.tokenizer, "bench"),
                 "prompt_ids": pad_ids(tokenize_prompts(base, cfg.template, prompts), x.shape[1])}
        torch.save(batch, f"{tmp}/batch.pt")
        tree = Path(tmp) / "against"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.against], check=True,
                       capture_output=True)
        try:
            sides = {"this tree": REPO / "src", args.against: tree / "src"}
            times: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(args.rounds):
                for name, src in sides.items():
                    env = {**os.environ, "PYTHONPATH": str(src)}
                    out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--child",
                                          f"{tmp}/batch.pt", str(args.steps)], env=env, check=True,
                                         capture_output=True, text=True).stdout
                    times[name] += json.loads(out.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"preset {args.preset}: a task step on {args.batch} chains (prompt width {x.shape[1]}, "
          f"{max(map(len, batch['tids'])) + 1} loops), {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps per side")
    for name, m in med.items():
        print(f"{name:<12} median {m:.3f} s/step  (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    print(f"{args.against} / this tree: {med[args.against] / med['this tree']:.2f}x")


if __name__ == "__main__":
    main()
