"""Training throughput of 1 process against N processes on this machine (torchrun; gloo on CPU, NCCL on GPUs).

    python benchmarks/bench_distributed.py [--nproc 2] [--threads T] [--preset tiny] [--steps 40] [key=value ...]

Each side is `rlf train --nproc K` on the same config and global batch, with T OpenMP threads per process (default
cores / K; on a machine shared with other work, --threads 1 keeps either side from oversubscribing it). Its rate is
the run's summary.json `examples_per_s` (training steps only: start-up, encoding and validation excluded; the
encodings are cached by the first run). Prints examples/s, the ratio, and how far apart the two runs' final weights
are. Not part of the test suite.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file


def threads(n: int, args) -> int:
    return args.threads or max(1, len(os.sched_getaffinity(0)) // n)


def train(n: int, out: Path, args, cache: Path) -> tuple[dict, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads(n, args)), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "rlf", "train", "--preset", args.preset, "--out", str(out), "--nproc", str(n),
           f"max_steps={args.steps}", f"batch_size={args.batch}", f"cache_dir={cache}", "early_stop_patience=0",
           f"val_every={args.steps}", f"ckpt_every={args.steps}", *args.overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="OpenMP threads per process (default: cores / processes)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {n: train(n, tmp / f"run{n}", args, tmp / "cache") for n in (1, args.nproc)}
        a, b = (load_file(tmp / f"run{n}" / "model.safetensors") for n in (1, args.nproc))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    cores = len(os.sched_getaffinity(0))
    print(f"rlf train --preset {args.preset} max_steps={args.steps} batch_size={args.batch} {' '.join(args.overrides)}"
          f"\n{cores} cores\n")
    print("| processes | threads each | examples/s | vs 1 process | wall s (with start-up) |")
    print("|---|---|---|---|---|")
    base_rate = rows[1][0]["examples_per_s"]
    for n, (summary, wall) in rows.items():
        rate = summary["examples_per_s"]
        print(f"| {n} | {threads(n, args)} | {rate:.1f} | {rate / base_rate:.2f}x | {wall:.1f} |")
    print(f"\nfinal weights, largest difference between the two runs: {diff:.2e}")


if __name__ == "__main__":
    main()
