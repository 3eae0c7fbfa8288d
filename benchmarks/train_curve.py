"""A run's training curve as a small JSON for docs/experiments/probes/: what a probe run is compared by.

    python benchmarks/train_curve.py RUN --every 50 [--note TEXT] [--command TEXT] -o docs/experiments/probes/NAME.json

From RUN/metrics.jsonl: every `every`-th logged training step as [step, phase, loss, per-loop accuracy of that
step's batch] (for a warm-up phase its one "loop" is the share of its dense targets named right), every validation
check as [step, val trace accuracy, val answer accuracy, val n], and the training seconds at the last check; the
run's config overrides against its preset are not recomputed here: pass the command that made it.

`--window A-B` (repeatable) adds, over the per-loop (task) batches logged at steps A..B, the mean accuracy of the
answer loop and of the pointer loops before it. A task batch holds chains of one length (batch_order buckets
them), so its per-loop accuracies end with the answer loop and then 1 + extra_halt_loops <HALT> loops.
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


def window_means(run: Path, lo: int, hi: int, halt_loops: int) -> dict:
    """Mean answer-loop and pointer-loop accuracy over the task batches logged at steps lo..hi (training batches,
    teacher-forced): the batch means averaged with equal weight."""
    answer, pointer = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        acc = rec.get("per_loop_acc", [])
        if "val_trace_acc" in rec or not lo <= rec["step"] <= hi or len(acc) < halt_loops + 1:
            continue
        answer.append(acc[-halt_loops - 1])
        if len(acc) > halt_loops + 1:
            pointer.append(sum(acc[: -halt_loops - 1]) / (len(acc) - halt_loops - 1))
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"steps": f"{lo}-{hi}", "batches": len(answer), "answer_loop_acc": mean(answer),
            "pointer_loops_acc": mean(pointer)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--note", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("--window", action="append", default=[], help="A-B: loop means over the task batches logged there")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    halt_loops = 1 + json.loads((args.run / "config.json").read_text()).get("extra_halt_loops", 1)
    out = {"command": args.command, "note": args.note, **curve(args.run, args.every),
           "windows": [window_means(args.run, *map(int, w.split("-")), halt_loops) for w in args.window]}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(out['train_every_step_phase_loss_per_loop_acc'])} training points, "
          f"{len(out['val_step_trace_answer_n'])} validation checks")


if __name__ == "__main__":
    main()
