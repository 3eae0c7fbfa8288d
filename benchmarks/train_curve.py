"""A run's training curve as a small JSON for docs/experiments/probes/: what a probe run is compared by.

    python benchmarks/train_curve.py RUN --every 50 [--window A-B ...] [--note TEXT] [--command TEXT] -o OUT.json

From RUN/metrics.jsonl: every `every`-th logged training step as [step, phase, loss, per-loop accuracy of that
step's batch] (for a warm-up phase its one "loop" is the share of its dense targets named right), every validation
check as [step, val trace accuracy, val answer accuracy, val n], and the training seconds at the last check. The
run's overrides are not recomputed here: pass the command that made it.

`--window A-B` (repeatable) adds, over the task (per-loop) batches among those points at steps A..B, the mean
accuracy of the answer loop and of the pointer loops before it (`window_means`, which also reads the points of an
older curve JSON). A task batch holds chains of one length (batch_order buckets them), so its per-loop accuracies
end with the answer loop and then 1 + extra_halt_loops <HALT> loops.
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


def window_means(points: list, lo: int, hi: int, halt_loops: int = 2) -> dict:
    """Mean answer-loop and pointer-loop accuracy over the task batches among curve points [step, phase, loss,
    per-loop accuracy] at steps lo..hi (training batches, teacher-forced), each batch weighing the same; a warm-up
    point (one "loop") is skipped."""
    answer, pointer = [], []
    for step, _, _, acc in points:
        if lo <= step <= hi and len(acc) > halt_loops:
            answer.append(acc[-halt_loops - 1])
            pointer += [sum(acc[: -halt_loops - 1]) / (len(acc) - halt_loops - 1)] if len(acc) > halt_loops + 1 else []
    return {"steps": f"{lo}-{hi}", "batches": len(answer),
            "answer_loop_acc": round(sum(answer) / len(answer), 4) if answer else None,
            "pointer_loops_acc": round(sum(pointer) / len(pointer), 4) if pointer else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--note", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("--window", action="append", default=[], help="A-B: loop means over the task points there")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    halt_loops = 1 + json.loads((args.run / "config.json").read_text()).get("extra_halt_loops", 1)
    out = {"command": args.command, "note": args.note, **curve(args.run, args.every)}
    points = out["train_every_step_phase_loss_per_loop_acc"]
    out["windows"] = [window_means(points, *map(int, w.split("-")), halt_loops) for w in args.window]
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}: {len(points)} training points, {len(out['val_step_trace_answer_n'])} validation checks",
          *out["windows"], sep="\n")


if __name__ == "__main__":
    main()
