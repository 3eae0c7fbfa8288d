"""Encoding throughput of the embedded default base at encoder_layers 6 and 30, and the cached second pass.

    python benchmarks/bench_encode.py [--n 256]

Prints examples/s and tokens/s per layer count, and the speed-up of a second pass that hits the cache,
all measured in this run. Not part of the test suite.
"""

import argparse
import tempfile
import time

from rlf.base import load_base, load_tokenizer
from rlf.cache import encode_cached
from rlf.tasks import generate, parse_hops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    prompts = [ex.prompt for ex in generate("chain", args.n, parse_hops("1-5"), 0, load_tokenizer("smollm2-135m"))]
    print(f"{args.n} forward chains, 1-5 hops, batch 32, float32 on CPU")
    print(f"{'layers':>6} {'examples/s':>11} {'tokens/s':>9} {'first s':>8} {'cached s':>9} {'speed-up':>9}")
    for layers in (6, 30):
        base = load_base("smollm2-135m", encoder_layers=layers)
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            enc = encode_cached(base, prompts, cache, progress=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            enc2 = encode_cached(base, prompts, cache, progress=False)
            enc2.batch(range(len(enc2)))  # read every encoding back
            cached = time.perf_counter() - t
        tokens = int(enc.lengths.sum())
        print(f"{layers:>6} {args.n / first:>11.1f} {tokens / first:>9.0f} {first:>8.2f} {cached:>9.3f} {first / cached:>8.0f}x")


if __name__ == "__main__":
    main()
