"""`rlf bench sweep SWEEP.yaml`: an experiment log. Train each variant of a recipe, measure it on dev hop counts,
keep every result in a committed JSON file and render it as a Markdown table.

A sweep file names a preset, the overrides every variant shares, the dev hop counts and how many chains per
dev hop count, and the variants (a name, its own overrides, the note of what it tests):

    preset: default
    overrides: [order=backward, distractors=2, n_train=6000, max_steps=400]
    dev_hops: 7,9,12
    n_dev: 200
    results: docs/experiments/pointer.json      # the log (committed: it outlives runs/ and caches)
    docs: docs/experiments/pointer.md
    variants:
      - name: attn-k128-none
        overrides: [core=transformer, core_dim=128, loop_pos=none]
        note: no loop clock at all

A variant whose config digest matches the logged one is not retrained (its logged row stands), so a sweep grows
across sessions; a variant whose config changed is measured again. Settings are chosen on these numbers
(validation data and dev hop counts), never on the test hop counts.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from pathlib import Path

import torch
import yaml

from rlf.config import load_config
from rlf.errors import RLFError
from rlf.evaluate import evaluate, fmt_rate, md_table
from rlf.headline.measure import steps_to_accuracy
from rlf.tasks import parse_hops
from rlf.train import train_or_reuse

log = logging.getLogger(__name__)

SWEEP_KEYS = {"preset", "overrides", "dev_hops", "n_dev", "results", "docs", "out", "variants"}
VARIANT_KEYS = {"name", "overrides", "note"}


def read_sweep(path: str | Path) -> dict:
    """The sweep file, checked: unknown keys, a variant without a name, duplicate names, bad overrides."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RLFError(f"{path}: cannot read the sweep ({e})") from None
    if not isinstance(spec, dict):
        raise RLFError(f"{path}: expected a mapping with `variants`")
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise RLFError(f"{path}: unknown keys {sorted(unknown)}; valid: {', '.join(sorted(SWEEP_KEYS))}")
    variants = spec.get("variants")
    if not isinstance(variants, list) or not variants:
        raise RLFError(f"{path}: `variants` must be a non-empty list")
    names = set()
    for i, v in enumerate(variants):
        where = f"{path}: variants[{i}]"
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"].strip():
            raise RLFError(f"{where}: needs a `name`")
        if set(v) - VARIANT_KEYS:
            raise RLFError(f"{where} ({v['name']}): unknown keys {sorted(set(v) - VARIANT_KEYS)}")
        if v["name"] in names:
            raise RLFError(f"{where}: duplicate name {v['name']!r}")
        names.add(v["name"])
        if not isinstance(v.get("overrides", []), list):
            raise RLFError(f"{where} ({v['name']}): `overrides` must be a list of key=value strings")
    spec.setdefault("preset", "default")
    spec.setdefault("overrides", [])
    spec["dev_hops"] = parse_hops(str(spec.get("dev_hops", "7,9,12")))
    spec["n_dev"] = int(spec.get("n_dev", 200))
    stem = path.with_suffix("")
    spec.setdefault("results", str(stem) + ".json")
    spec.setdefault("docs", str(stem) + ".md")
    spec.setdefault("out", f"runs/sweep-{path.stem}")
    for v in variants:  # every config is valid before anything trains
        try:
            v["config"] = load_config(spec["preset"], [*spec["overrides"], *v.get("overrides", [])])
        except RLFError as e:
            raise RLFError(f"{path}: variant {v['name']}: {e}") from None
        if v["config"].supervision == "answer_once":
            raise RLFError(f"{path}: variant {v['name']}: supervision=answer_once has no trace to measure; the no-loop "
                           "baseline is measured by `rlf bench headline`")
    return spec


def val_curve(metrics_path: Path) -> list[tuple[int, float, float]]:
    """(step, train seconds, val trace accuracy) of every validation in a run's metrics.jsonl."""
    out = []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "val_trace_acc" in rec:
            out.append((rec["step"], rec.get("train_seconds"), rec["val_trace_acc"]))
    return out


def dev_measure(run_dir: Path, hops: list[int], n: int) -> dict:
    """Per dev hop count: trace and answer accuracy and halt precision of `rlf eval` (no ablations)."""
    res = evaluate(run_dir, hops=hops, n=n, ablations="", progress=False, write=False)
    return {h: {k: m[k] for k in ("trace_acc", "answer_acc", "halt_precision")}
            for sp in res["splits"].values() for h, m in sp["conditions"]["intact"]["by_hops"].items()}


def run_sweep(path: str | Path, only: list[str] | None = None) -> dict:
    """Train and measure every variant not already logged with the same config; write the JSON log and Markdown."""
    spec = read_sweep(path)
    results_path = Path(spec["results"])
    log_data = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": {}}
    for v in spec["variants"]:
        if only and v["name"] not in only:
            continue
        cfg = v["config"]
        row = log_data["rows"].get(v["name"])
        if row and row.get("digest") == cfg.digest() and row.get("dev_hops") == spec["dev_hops"] \
                and row.get("n_dev") == spec["n_dev"]:
            log.info("%s: logged with the same config; not retrained", v["name"])
            continue
        run_dir = Path(spec["out"]) / v["name"]
        summary = train_or_reuse(cfg, run_dir, None)
        curve = val_curve(run_dir / "metrics.jsonl")
        row = {
            "name": v["name"], "note": v.get("note", ""), "overrides": v.get("overrides", []),
            "digest": cfg.digest(), "steps": summary["steps"], "stopped": summary["stopped"],
            "train_seconds": summary["train_seconds"], "encode_cost_seconds": summary.get("encode_cost_seconds"),
            "val_trace_acc": summary["val_trace_acc"], "val_answer_acc": summary["val_answer_acc"],
            "best_val_trace_acc": max((a for _, _, a in curve), default=None),
            "to_90": steps_to_accuracy(run_dir / "metrics.jsonl", 0.9),
            "to_99": steps_to_accuracy(run_dir / "metrics.jsonl", 0.99),
            "val_curve": [[s, round(t or 0, 1), a] for s, t, a in curve],
            "dev_hops": spec["dev_hops"], "n_dev": spec["n_dev"], "dev": dev_measure(run_dir, spec["dev_hops"],
                                                                                     spec["n_dev"]),
            "measured": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        }
        # re-read before writing: another `rlf bench sweep --only` may have logged variants meanwhile
        log_data = json.loads(results_path.read_text()) if results_path.is_file() else {"rows": {}}
        log_data["rows"][v["name"]] = row
        log_data.update(preset=spec["preset"], overrides=spec["overrides"], sweep=str(path))
        results_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_path.with_name(results_path.name + ".tmp")
        tmp.write_text(json.dumps(log_data, indent=1))  # after every variant: an interruption keeps it
        os.replace(tmp, results_path)
        Path(spec["docs"]).write_text(render_sweep(log_data, spec))
    log_data = json.loads(results_path.read_text()) if results_path.is_file() else log_data
    Path(spec["docs"]).write_text(render_sweep(log_data, spec))
    return {**log_data, "docs": spec["docs"]}


def _cell(m: dict | None) -> str:
    return fmt_rate(m, short=True) if m else "—"


def render_sweep(log_data: dict, spec: dict) -> str:
    """The experiment log as Markdown: a row per variant, in the sweep file's order (then rows no longer in it)."""
    order = [v["name"] for v in spec["variants"]]
    names = [n for n in order if n in log_data["rows"]] + sorted(set(log_data["rows"]) - set(order))
    hops = spec["dev_hops"]
    header = ["variant", "overrides", "steps", "train s", "val trace", "to 99% (step / s)",
              *[f"dev {h} hops trace (answer)" for h in hops], "note"]
    rows = []
    for n in names:
        r = log_data["rows"][n]
        dev = [f"{_cell(m.get('trace_acc'))} ({_cell(m.get('answer_acc'))})" for m in (r["dev"].get(str(h), {})
                                                                                         for h in hops)]
        to99 = r["to_99"]
        rows.append([n, " ".join(r["overrides"]) or "—", str(r["steps"]), f"{r['train_seconds']:.0f}",
                     f"{r['val_trace_acc']:.3f}", f"{to99['step']} / {to99['train_seconds']:.0f}" if to99["step"]
                     else "not reached", *dev, r["note"] + ("" if n in order else " (no longer in the sweep file)")])
    return (f"# Experiment log: `{spec.get('name', Path(log_data.get('sweep', 'sweep')).stem)}`\n\n"
            f"Generated by `rlf bench sweep {log_data.get('sweep')}`; do not edit by hand. Every variant is the preset "
            f"`{spec['preset']}` with `{' '.join(spec['overrides'])}` plus its own overrides. Validation: the run's "
            f"val split; dev: {spec['n_dev']} held-out chains per dev hop count ({', '.join(map(str, hops))}), "
            "which choose settings; test hop counts are never used here. Rates: % (count/n).\n\n"
            + md_table(header, rows) + "\n")
