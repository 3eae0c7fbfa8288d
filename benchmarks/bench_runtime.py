"""The C runtime (runtime/rlf.c) against `rlf solve`, both at batch 1, measured in the same run.

    python benchmarks/bench_runtime.py RUN [--n 100] [--dtypes f32,f16,q8_0] [--threads 1] [--native]

Exports RUN at each dtype, builds the runtime with the system compiler, and runs the first N prompts of RUN's
val.jsonl through `LoadedRun.solve` (one prompt at a time, as `rlf solve` does) and through `rlf-run`, each in its
own process so that its peak RSS (VmHWM: Linux) is its own. Prints prompts/s (tokenise + encode + loop, load excluded), loops/s
(the loop phase only), load time, peak RSS, the file size per dtype, and how often each dtype gives the same trace
as Python (loop count, top-1 tokens and halting loop) and the largest probability difference; plus trace accuracy
against the targets. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON_SIDE = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from rlf.train import load_run
t = time.perf_counter()
run = load_run(sys.argv[1], device="cpu")
load_s = time.perf_counter() - t
prompts = json.load(open(sys.argv[2]))
run.solve(prompts[:1])  # warm-up
t = time.perf_counter()
for p in prompts:  # what `rlf solve` does per prompt: tokenise, encode, loop, decode
    run.solve([p])
solve_s = time.perf_counter() - t
traces, loop_s, loops = [], 0.0, 0
for p in prompts:  # the loop phase alone, on the same encodings
    x, lengths = run.encode([p])
    t = time.perf_counter()
    out = run.model.solve(x, lengths)
    loop_s += time.perf_counter() - t
    h = int(out["halted_at"][0])
    n = h + 1 if h >= 0 else out["tokens"].shape[1]
    loops += n
    traces.append({"ids": out["tokens"][0, :n].tolist(), "p": out["p"][0, :n].tolist(),
                   "p_halt": out["p_halt"][0, :n].tolist()})
rss_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"load_s": load_s, "solve_s": solve_s, "loop_s": loop_s, "loops": loops, "peak_rss_kb": rss_kb,
                  "traces": traces, "halt_id": run.model.halt_id}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory (its val.jsonl gives the prompts)")
    ap.add_argument("--n", type=int, default=100, help="prompts (default 100)")
    ap.add_argument("--dtypes", default="f32,f16,q8_0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the Python side (the runtime uses 1)")
    ap.add_argument("--native", action="store_true", help="also run a build with -march=native (as -O2 otherwise)")
    args = ap.parse_args()

    from rlf.export import build_runtime, export_run
    from rlf.tasks import read_jsonl
    from rlf.train import load_run, target_ids_of

    examples = read_jsonl(Path(args.run) / "val.jsonl")[: args.n]
    prompts = [ex.prompt for ex in examples]
    if any("\n" in p for p in prompts):
        sys.exit("prompts with newlines cannot go through --prompts (one prompt a line)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "prompts.json").write_text(json.dumps(prompts))
        (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
        builds = {"": build_runtime(tmp / "rlf-run")}
        if args.native:
            builds[" -march=native"] = build_runtime(tmp / "rlf-run-native", ("-march=native",))
        loaded = load_run(args.run, device="cpu")
        targets = target_ids_of(examples, loaded.base.tokenizer, "val.jsonl")
        sizes = {}
        for dtype in args.dtypes.split(","):
            sizes[dtype] = export_run(args.run, tmp / f"{dtype}.gguf", dtype, loaded=loaded)["bytes"]
        del loaded

        py = json.loads(subprocess.run([sys.executable, "-c", PYTHON_SIDE, args.run, str(tmp / "prompts.json"),
                                        str(args.threads)], capture_output=True, text=True, env=env,
                                       check=True).stdout.splitlines()[-1])
        halt = py["halt_id"]
        rows = [("rlf solve (Python, torch)", "-", len(prompts) / py["solve_s"], py["loops"] / py["loop_s"],
                 py["load_s"], py["peak_rss_kb"], None, None, trace_acc(py["traces"], targets, halt))]
        for flags, dtype in [(f, d) for f in builds for d in sizes]:
            done = subprocess.run([str(builds[flags]), str(tmp / f"{dtype}.gguf"), "--json", "--timing",
                                   "--max-loops", "64", "--prompts", str(tmp / "prompts.txt")],
                                  capture_output=True, text=True, check=True)
            timing = dict(kv.split("=") for kv in done.stderr.strip().split(":", 1)[1].split())
            c = [json.loads(line) for line in done.stdout.splitlines()]
            c_traces = [{"ids": [s["id"] for s in x["trace"]], "p": [s["p"] for s in x["trace"]],
                         "p_halt": [s["p_halt"] for s in x["trace"]]} for x in c]
            same = sum(a["ids"] == b["ids"] for a, b in zip(c_traces, py["traces"]))
            dp = max(max(abs(u - v) for u, v in zip(a["p"] + a["p_halt"], b["p"] + b["p_halt"]))
                     for a, b in zip(c_traces, py["traces"]) if a["ids"] == b["ids"]) if same else float("nan")
            work = float(timing["tokenize_s"]) + float(timing["encode_s"]) + float(timing["loop_s"])
            rows.append((f"rlf-run {dtype}{flags}", f"{sizes[dtype] / 2**20:.1f}", len(prompts) / work,
                         int(timing["loops"]) / float(timing["loop_s"]), float(timing["load_s"]),
                         int(timing["peak_rss_kb"]), same, dp, trace_acc(c_traces, targets, halt)))

    print(f"{args.run}: {len(prompts)} prompts of val.jsonl, batch 1, {args.threads} thread(s); "
          f"Python loops {py['loops']} in all")
    print("| engine | file MiB | prompts/s | loops/s | load s | peak RSS MiB | same trace as Python | max abs dp "
          "| trace acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = rows[0]
    for r in rows:
        same = "-" if r[6] is None else f"{r[6]}/{len(prompts)}"
        dp = "-" if r[7] is None else f"{r[7]:.1e}"
        ratio = "" if r is base else f" ({r[2] / base[2]:.1f}x)"
        lratio = "" if r is base else f" ({r[3] / base[3]:.1f}x)"
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f}{ratio} | {r[3]:.1f}{lratio} | {r[4]:.2f} | {r[5] / 1024:.0f} | {same} "
              f"| {dp} | {r[8]:.3f} |")


def trace_acc(traces: list[dict], targets: list[list[int]], halt: int) -> float:
    """Every loop target right and <HALT> right after the last (the trace ends at the first <HALT>)."""
    return sum(t["ids"] == ids + [halt] for t, ids in zip(traces, targets)) / len(targets)


if __name__ == "__main__":
    main()
