"""A run's training curve as a small JSON for docs/experiments/probes/: what a probe run is compared by.

    python benchmarks/train_curve.py RUN --every 50 [--note TEXT] [--command TEXT] -o docs/experiments/probes/NAME.json

From RUN/metrics.jsonl: every `every`-th logged training step as [step, phase, loss, per-loop accuracy of that
step's batch] (for a warm-up phase its one "loop" is the share of its dense targets named right), every validation
check as [step, val trace accuracy, val answer accuracy, val n], and the training seconds at the last check; the
run's config overrides against its preset are not recomputed here: pass the command that made it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run: Path, every: int) -> dict:
    train, val, seconds = [], [], None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val_trace_acc" in rec:
            val.append([rec["step"], rec["val_trace_acc"], rec["val_answer_acc"], rec["val_n"]])
            seconds = rec.get("train_seconds", seconds)
        elif rec["step"] % every == 0:
            train.append([rec["step"], rec.get("phase"), round(rec["loss"], 3), rec["per_loop_acc"]])
    return {"train_every_step_phase_loss_per_loop_acc": train, "val_step_trace_answer_n": val,
            "train_seconds_at_last_check": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--note", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    out = {"command": args.command, "note": args.note, **curve(args.run, args.every)}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(out['train_every_step_phase_loss_per_loop_acc'])} training points, "
          f"{len(out['val_step_trace_answer_n'])} validation checks")


if __name__ == "__main__":
    main()
