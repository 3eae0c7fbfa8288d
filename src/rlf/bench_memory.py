"""Peak inference memory against the loop count (`rlf bench memory RUN`): it must not grow (O(1) per loop).

For each loop count L the same batch is solved with exactly L loops (`min_loops = max_loops = L`) and the
peak memory of that call is taken: on CUDA `torch.cuda.max_memory_allocated` above the memory allocated
before the call; on CPU the process's peak resident set size (Linux: VmHWM, reset before each call through
/proc/self/clear_refs; elsewhere: psutil RSS sampled every millisecond) above the RSS measured once after
loading and before a warm-up call (with glibc's mmap threshold fixed, so that freed buffers leave the
RSS). On CPU each loop count is measured REPEATS times and the least peak kept: a peak RSS can come out a
page-rounding or allocator step high in one call (CI saw one such outlier fail a flat run), while a real per-loop
leak shows in every call. The growth per loop is the least-squares slope of peak memory on L for L >= 2: one loop never holds
the previous loop's outputs alongside its own, so 1 -> 2 loops is a one-time step, not growth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from rlf.errors import RLFError
from rlf.evaluate import heldout_examples, md_table, train_hops
from rlf.train import LoadedRun

log = logging.getLogger(__name__)

MB = 2**20
DEFAULT_LOOPS = (1, 2, 4, 8, 16, 32, 64)
# "flat": the fitted growth over the loop range is below FLAT_MB or FLAT_FRACTION of the peak, whichever is larger
# (process RSS moves by a few MB with allocator state; a per-loop leak of the (B, V) softmax is ~3 MB per loop)
FLAT_MB, FLAT_FRACTION = 1.0, 0.05
STATE_FRACTION = 0.1  # or: growth per loop below this fraction of one loop state (see fit_growth)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
REPEATS = 3  # CPU: calls per loop count; the least peak is kept (see the module docstring)


def _fix_mmap_threshold() -> bool:
    """glibc: serve every buffer >= 64 KiB by mmap and give it back at free (no dynamic threshold), so RSS
    follows live tensors rather than the allocator's retained heap. False where not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024))
    except (OSError, AttributeError):
        return False


def _trim() -> None:
    """glibc: hand freed heap pages back to the OS, so memory an earlier call freed (and the allocator kept)
    is not reused invisibly by the next one: RSS then rises for every page a call touches."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    """Reset Linux's peak-RSS counter (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _peak_cpu(fn) -> tuple[int, str]:
    """Peak process RSS (bytes) while `fn()` runs, and the method used."""
    _trim()
    if _reset_hwm():
        fn()
        return _read_hwm(), "VmHWM"
    peak, stop = _rss(), threading.Event()

    def sample():
        nonlocal peak
        while not stop.wait(0.001):
            peak = max(peak, _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return max(peak, _rss()), "psutil RSS sampled every 1 ms"


def measure_peaks(fn: Callable[[int], object], loops: list[int], device: torch.device) -> dict:
    """Peak memory (MB) of `fn(L)` for each loop count L, after one warm-up call, and how it was measured."""
    cuda = device.type == "cuda"
    allocator = None if cuda else ("glibc, mmap threshold fixed at 64 KiB" if _fix_mmap_threshold() else "default")
    if not cuda:
        _trim()
    baseline = 0 if cuda else _rss()
    fn(loops[0])  # warm-up: lazy initialisation, allocator pools
    peaks, method = [], "torch.cuda.max_memory_allocated" if cuda else None
    for n_loops in tqdm(loops, desc="bench memory", unit="run", dynamic_ncols=True, leave=False):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fn(n_loops)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - before)
        else:
            measured = [_peak_cpu(lambda: fn(n_loops)) for _ in range(REPEATS)]
            method = f"{measured[0][1]}, least of {REPEATS} calls"
            peaks.append(min(peak for peak, _ in measured) - baseline)
    return {"device": str(device), "method": method, "allocator": allocator, "loops": list(loops),
            "peak_mb": [round(p / MB, 3) for p in peaks],
            "baseline": "CUDA memory allocated before each call" if cuda else "process RSS before the warm-up call"}


def fit_growth(loops: list[int], peak_mb: list[float], state_mb: float = 0.0) -> dict:
    """Least-squares growth per loop on the loop counts >= 2, and whether it is flat.

    Flat: the fitted growth over the loop range stays below max(FLAT_MB, FLAT_FRACTION x the first peak), or the
    growth per loop is below STATE_FRACTION of one loop state (`state_mb`, the (B, T, d) tensor a loop produces;
    keeping anything per loop, a KV cache or the states themselves, costs at least that much per loop). The
    second clause is for process RSS, where glibc's heap settles over tens of loops (measured: +5.7 MB from 2 to
    64 loops, then +0.02 MB from 64 to 128).
    """
    fit = [i for i, n in enumerate(loops) if n >= 2] or list(range(len(loops)))
    x, y = np.array(loops, dtype=np.float64)[fit], np.array(peak_mb, dtype=np.float64)[fit]
    slope = float(np.polyfit(x, y, 1)[0]) if len(fit) > 1 else 0.0
    tolerance = max(FLAT_MB, FLAT_FRACTION * float(y[0]))
    flat = abs(slope) * (x[-1] - x[0]) < tolerance or abs(slope) < STATE_FRACTION * state_mb
    rule = f"|fitted growth| x (fitted loop range) < max({FLAT_MB:g} MB, {FLAT_FRACTION:g} x peak at {int(x[0])} loops) " \
           f"= {tolerance:.2f} MB"
    if state_mb:
        rule += f", or |fitted growth| < {STATE_FRACTION:g} x one loop state ({state_mb:.2f} MB) per loop"
    return {"growth_mb_per_loop": slope, "fitted_on_loops": x.astype(int).tolist(),
            "delta_mb": float(peak_mb[-1] - peak_mb[0]), "flat": bool(flat), "flat_rule": rule}


@torch.no_grad()
def bench_memory(run: LoadedRun, run_dir: str | Path | None = None, loops=DEFAULT_LOOPS, batch_size: int = 32,
                 write: bool = True) -> dict:
    """Peak memory of `solve` at each loop count, its fitted growth per loop; writes memory.json + memory.md."""
    model, device = run.model.eval(), run.base.device
    hops = max(train_hops(Path(run_dir), run.config) if run_dir else [1])
    prompts = [ex.prompt for ex in heldout_examples(run.config, run.base.tokenizer, [hops], batch_size)]
    x, lengths, extra = run.encode_with_ids(prompts)
    x = x.float().to(device)
    loops = sorted(loops)
    peaks = measure_peaks(lambda n: model.solve(x, lengths, n, min_loops=n, **extra), loops, device)
    result = {"run": str(run_dir) if run_dir else None, "batch_size": len(prompts),
              "prompt_tokens": int(lengths.max()), "hops": hops, **peaks,
              **fit_growth(loops, peaks["peak_mb"], state_mb=x.numel() * x.element_size() / MB)}
    if write and run_dir:
        (Path(run_dir) / "memory.json").write_text(json.dumps(result, indent=2))
        (Path(run_dir) / "memory.md").write_text(render_memory(result))
    return result


def render_memory(result: dict) -> str:
    """memory.md: peak memory per loop count and the fitted growth."""
    rows = [[str(n), f"{p:.2f}"] for n, p in zip(result["loops"], result["peak_mb"])]
    return (f"# Inference memory vs loop count\n\n{result['device']}, batch {result['batch_size']} x "
            f"{result['prompt_tokens']} tokens ({result['hops']}-hop prompts); peak by {result['method']}, above "
            f"the {result['baseline']}.\n\n" + md_table(["loops", "peak MB"], rows)
            + f"\ngrowth per loop (least squares): {result['growth_mb_per_loop']:+.4f} MB/loop; "
              f"peak at {result['loops'][-1]} minus peak at {result['loops'][0]} loops: {result['delta_mb']:+.2f} MB; "
              f"flat ({result['flat_rule']}): {'yes' if result['flat'] else 'NO'}\n")


def memory_in_fresh_process(out: Path, loops, batch_size: int, device: str) -> dict:
    """`rlf bench memory` in a fresh process: RSS here depends on what training and evaluation left in the allocator."""
    cmd = [sys.executable, "-m", "rlf.cli", "bench", "memory", str(out), "--loops", ",".join(map(str, loops)),
           "--batch-size", str(batch_size), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RLFError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads((out / "memory.json").read_text())
