"""`rlf bench headline`: the seeds' headline table, measured here, for the Mamba2 and Transformer cores.

For each protocol — `forward` (the seeds': statements in chain order) and `backward` with distractors (genuine
pointer chasing) — both cores are trained on identical data and hyperparameters (one preset, the same
overrides; only `core` differs) and measured the same way on the same held-out sets: in-distribution and
per-hop OOD trace accuracy, halt precision, the lifeline severed at inference (gate = 0), inference memory
per loop (in a fresh process), steps to 99%, throughput. Beside them, as baselines on the same prompts:
the frozen base alone (all its layers, the first word of its greedy generation) and a no-loop model (the
core applied once, trained with the answer as its only target: `supervision=answer_once`). Two stability
measurements: the loop forced to run twice the needed loops without stopping at `<HALT>` (halting must be
absorbing, the answer must not change), and per hop count the loop at which `<HALT>` first fires. Then a
component ablation table (lifeline, loop position, supervision) on the first core and protocol.

The modules, in the order the tool runs them: `plan` (the jobs and their held-out sets), `rlf.train.train_or_reuse`
(a finished run in `--out` is reused, an interrupted one resumed), `measure` (one function per kind of part),
`parts` (every measured piece is a committed JSON file beside RESULTS.md, keyed by what produced it: a part whose
key matches is reused without training), `render` (RESULTS.md from the parts alone) and `plot`.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from rlf.base import Base, load_base
from rlf.config import TrainConfig
from rlf.errors import RLFError
from rlf.headline.measure import Subject, measure_part
from rlf.headline.parts import (load_parts, part_key, part_path, parts_folder, planned, provenance, stored_key,
                                write_part)
from rlf.headline.plan import SIZES, HeldOut, parse_ablations, plan_jobs
from rlf.headline.plot import plot_per_hop
from rlf.headline.render import assemble, render_results
from rlf.tasks import parse_hops
from rlf.train import file_digest, load_run, train_or_reuse

log = logging.getLogger(__name__)


def headline_command(settings: dict) -> str:
    """The `rlf bench headline` command line that reproduces these settings."""
    args = ["rlf", "bench", "headline", "--out", settings["out"], "--protocols", ",".join(settings["protocols"]),
            "--cores", ",".join(settings["cores"]), "--ablations", ",".join(settings["ablations"]) or "off",
            "--n-ood", str(settings["n"]), "--ood-hops", ",".join(map(str, settings["ood_hops"])),
            "--preset", settings["preset"], "--distractors", str(settings["distractors"]), "--docs", settings["docs"]]
    return shlex.join(args + (["--quick"] if settings["quick"] else []) + settings["overrides"])


def docs_path(out: str | Path | None, docs: str | Path | None, quick: bool) -> Path:
    """The Markdown report: --docs, else docs/RESULTS.md (with --quick: RESULTS.md inside --out)."""
    sizes = SIZES["quick" if quick else "full"]
    return Path(docs or sizes["docs"] or Path(out or sizes["out"]) / "RESULTS.md")


def run_headline(out: str | Path | None = None, *, protocols=("forward", "backward"), cores=("mamba2", "transformer"),
                 ablations: str | list[str] | None = "on", n: int | None = None,
                 ood_hops: str | list[int] | None = None, preset: str | None = None, overrides=(),
                 distractors: int = 2, docs: str | Path | None = None, quick: bool = False,
                 progress: bool = True) -> dict:
    """Measure every part of the plan not already committed with its key (training or reusing the runs it needs),
    then render the Markdown report and the plot from all the parts. Returns `render_headline`'s dict."""
    sizes = SIZES["quick" if quick else "full"]
    out = Path(out or sizes["out"])
    docs = docs_path(out, docs, quick)
    preset = preset or sizes["preset"]
    n = sizes["n"] if n is None else n
    if n <= 0:
        raise RLFError(f"--n-ood {n}: must be a positive number of chains per hop count")
    if distractors < 0:
        raise RLFError(f"--distractors {distractors}: must be 0 or more")
    ood = parse_hops(ood_hops or sizes["ood_hops"]) if not isinstance(ood_hops, list) else sorted(ood_hops)
    variants = parse_ablations(ablations) if not isinstance(ablations, list) else ablations
    jobs = plan_jobs(preset, [*sizes["train"], *overrides], list(protocols), list(cores), variants, distractors, n,
                     quick)
    command = headline_command({"out": str(out), "docs": str(docs), "protocols": list(protocols),
                                "cores": list(cores), "ablations": variants, "n": n, "ood_hops": ood, "preset": preset,
                                "distractors": distractors, "quick": quick, "overrides": list(overrides)})
    parts_dir, heldout = parts_folder(docs), HeldOut()
    bases: dict = {}

    def base_for(cfg: TrainConfig, layers: int | None) -> Base:
        key = (cfg.base, layers, cfg.device)
        if key not in bases:
            bases[key] = load_base(cfg.base, layers, device=cfg.device)
        return bases[key]

    summaries: dict[str, dict] = {}
    for i, job in enumerate(jobs, 1):
        trained = heldout.train_hops(job.cfg)
        if any(h in trained for h in ood):
            raise RLFError(f"--ood-hops {','.join(map(str, ood))}: {job.name} trains on hops "
                           f"{','.join(map(str, trained))}; OOD hops must lie outside them")
        todo = []
        for kind, hops in planned(job, trained + ood):
            key, path = part_key(job, kind, hops, heldout), part_path(parts_dir, job, kind, hops)
            if stored_key(path) != key:
                todo.append((kind, hops, key, path))
        if not todo:
            log.info("headline [%d/%d] %s (%s): every part committed with its key; reused", i, len(jobs), job.name,
                     job.role)
            continue
        log.info("headline [%d/%d] %s (%s): %d parts to measure", i, len(jobs), job.name, job.role, len(todo))
        if job.role == "base_alone":  # every layer: the base model's own next-token prediction
            subject = Subject(job, base_for(job.cfg, None))
        else:
            base = base_for(job.cfg, job.cfg.encoder_layers)
            if job.name not in summaries:
                summaries[job.name] = train_or_reuse(job.cfg, out / job.name, base)
            subject = Subject(job, base, load_run(out / job.name, base=base), out / job.name, summaries[job.name])
        weights = None if subject.run_dir is None else file_digest(subject.run_dir / "model.safetensors")
        for kind, hops, key, path in todo:
            value = measure_part(kind, hops, key["settings"], subject, heldout, progress)
            write_part(path, job, kind, hops, key, value, provenance(subject.base.device, command, weights))
    return render_headline(docs, heldout)


def render_headline(docs: str | Path, heldout: HeldOut | None = None) -> dict:
    """Write RESULTS.md at `docs` and its per-hop plot from the committed parts beside it, alone.

    Returns {"docs", "plot", "parts_dir", "parts", "protocols"} (the parts read, the columns made of them)."""
    docs = Path(docs)
    parts_dir, heldout = parts_folder(docs), heldout or HeldOut()
    parts = load_parts(parts_dir, heldout)
    if not parts:
        raise RLFError(f"{parts_dir}: no result parts to render (`rlf bench headline` measures them)")
    protocols = assemble(parts, heldout)
    plot = docs.with_name(docs.stem.replace("RESULTS", "results") + "_per_hop.png")
    if protocols:
        plot_per_hop(protocols, plot)
    docs.write_text(render_results(parts, protocols, docs.parent, plot.name))
    log.info("headline: %s and %s written from %d parts in %s", docs, plot, len(parts), parts_dir)
    return {"docs": str(docs), "plot": str(plot), "parts_dir": str(parts_dir), "parts": parts, "protocols": protocols}
