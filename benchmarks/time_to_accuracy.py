"""Wall time to a validation trace accuracy (default 0.99) for two training recipes, in one run.

    python benchmarks/time_to_accuracy.py [--baseline "default"] [--candidate "default key=value ..."]
                                          [--target 0.99] [--out runs/tta]

Each recipe is a preset name followed by key=value overrides, as `rlf train --preset NAME key=value ...` takes them.
Both train on the same data and seed (the data keys, seed, n_val, base and template must agree, or the script
refuses), one after the other, each from an empty encoding cache of its own under --out (so encoding its prompts is
counted), and each stops at its first validation check at or above the target (early_stop_patience=1). The wall
time is that of the whole `rlf.train.train` call: making the data, encoding, training, validation checks and
checkpoints. Prints for each recipe its steps, encoding, training and wall seconds and final val accuracy, then the
candidate's wall time over the baseline's; writes the same to --out/time_to_accuracy.json. A recipe that does not
reach the target within its max_steps is marked so. Not part of the test suite.
"""

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import torch

from rlf.config import load_config
from rlf.train import train

SAME = ("task", "order", "distractors", "hops", "seed", "data_seed", "n_val", "base", "encoder_layers", "template")


def recipe(text: str, out: Path, name: str, target: float):
    preset, *overrides = shlex.split(text)
    return load_config(preset, [*overrides, f"cache_dir={out / ('cache-' + name)}", f"early_stop_acc={target}",
                                "early_stop_patience=1"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="default")
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--out", default="runs/tta")
    args = ap.parse_args()
    out = Path(args.out)
    cfgs = {name: recipe(getattr(args, name), out, name, args.target) for name in ("baseline", "candidate")}
    differ = [k for k in SAME if getattr(cfgs["baseline"], k) != getattr(cfgs["candidate"], k)]
    if differ:
        raise SystemExit(f"the recipes must share the data and seed; they differ in {', '.join(differ)}")
    rows = {}
    for name, cfg in cfgs.items():
        for path in (out / name, out / f"cache-{name}"):
            shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        summary = train(cfg, out / name)
        rows[name] = {"recipe": getattr(args, name), "reached": summary["stopped"].startswith("early stop"),
                      "steps": summary["steps"], "encode_s": summary["encode_seconds"],
                      "train_s": summary["train_seconds"], "wall_s": round(time.perf_counter() - t0, 1),
                      "val_trace_acc": summary["val_trace_acc"]}
    print(f"target: val trace accuracy >= {args.target}; {torch.get_num_threads()} threads; empty caches")
    print(f"{'recipe':<10} {'reached':>7} {'steps':>6} {'encode_s':>9} {'train_s':>8} {'wall_s':>7} {'val':>6}")
    for name, r in rows.items():
        print(f"{name:<10} {str(r['reached']):>7} {r['steps']:>6} {r['encode_s']:>9.1f} {r['train_s']:>8.1f} "
              f"{r['wall_s']:>7.1f} {r['val_trace_acc']:>6.3f}")
    b, c = rows["baseline"], rows["candidate"]
    print(f"candidate / baseline wall time: {c['wall_s'] / b['wall_s']:.2f}"
          + ("" if b["reached"] and c["reached"] else " (a recipe did not reach the target: not a time to it)"))
    (out / "time_to_accuracy.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
