"""`rlf bench babi`: the bAbI-10k table, per task test error beside the published MemN2N and EntNet figures.

For each task id the train and test files of the bAbI folder (`qaN_*_train*.txt`, `qaN_*_test.txt`) are read by the
bAbI reader (`rlf.tasks.babi`: loop targets from the supporting facts where the task has them, targets of up to the
run's `target_tokens` tokens), the last 10% of the training stories are held out as the validation split (bAbI has
none), a model is trained on the rest (`rlf.train.train_or_reuse`: a run directory per task under --out, resumed
after an interruption) and evaluated on the test file (`rlf.evaluate.evaluate`): test error = 100% - answer accuracy,
and trace accuracy where the task has loop targets before the answer, with Wilson 95% intervals. A task the reader
refuses (a target longer than `target_tokens`, a malformed line) is recorded with the reason, not skipped.

Every task's result is a small JSON part committed under --results (docs/babi/), keyed as `rlf bench headline`'s parts
are (`rlf.headline.parts`): the config digest, the digests of the task's train and test files, the version of this
code and its settings, and the seed; it records when, on what machine and by which command it was measured. A part
whose key is the key its task gets now is reused without training, so the table is built a few tasks per session;
--doc (docs/babi.md) is rendered from the parts alone, and a part whose key no longer matches is shown as stale.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from pathlib import Path

from rlf.base import Base, load_base
from rlf.config import TrainConfig, load_config
from rlf.errors import RLFError
from rlf.evaluate import evaluate, fmt_rate, md_table, rate
from rlf.headline.parts import (MEASURED_FIELDS, NOT_MEASURED, changed_fields, check_fields, provenance,
                                read_json_part, write_json)
from rlf.headline.render import cell, fmt_seconds, machine_text
from rlf.tasks import parse_int_list, read_babi, write_jsonl
from rlf.tasks.babi import babi_file, split_last_stories
from rlf.train import file_digest, load_run, train_or_reuse

log = logging.getLogger(__name__)

VERSION = 1  # of reading, splitting, evaluating; in every part's key: raise it when a change alters what parts hold
VAL_FRACTION = 0.1  # the last 10% of a task's training stories are its validation split
FAILED = 0.05  # the papers' failed task: test error above 5%
TOOL_KEYS = ("train_file", "val_file")  # set per task by the tool, left out of the config digest
PART_FIELDS = {"task": int, "spec": dict, "key": dict, "measured": dict, "value": dict}
VALUE_FIELDS = {"train_file": str, "test_file": str}
TRAINED_FIELDS = {"n_train": int, "n_val": int, "n_test": int, "loop_targets": bool, "test_error": dict,
                  "trace_acc": dict, "train_seconds": (int, float), "steps": int, "stopped": str}

# The task names (as the files name them) and the published test error % on bAbI-10k, each model trained per task:
# MemN2N (Sukhbaatar et al. 2015) as tabulated in the README of github.com/ml-lab/rmn (its 20 values give the mean
# 6.6 and the 4 failed tasks it states); tasks 8 and 10: None, another copy gives 0.9 and 0.0 against its 0.8 and 2.4.
# EntNet (Henaff et al. 2017, Table 2): the "EntNet (paper)" column of the authors' code, facebookarchive/MemNN
# EntNet-babi/README.md (0 failed tasks, mean 0.5).
PUBLISHED = {
    1: ("single-supporting-fact", 0.0, 0.0), 2: ("two-supporting-facts", 0.3, 0.1),
    3: ("three-supporting-facts", 9.3, 4.1), 4: ("two-arg-relations", 0.0, 0.0),
    5: ("three-arg-relations", 0.6, 0.3), 6: ("yes-no-questions", 0.0, 0.2), 7: ("counting", 3.7, 0.0),
    8: ("lists-sets", None, 0.5), 9: ("simple-negation", 0.8, 0.1), 10: ("indefinite-knowledge", None, 0.6),
    11: ("basic-coreference", 0.0, 0.3), 12: ("conjunction", 0.0, 0.0), 13: ("compound-coreference", 0.0, 1.3),
    14: ("time-reasoning", 0.0, 0.0), 15: ("basic-deduction", 0.0, 0.0), 16: ("basic-induction", 0.4, 0.2),
    17: ("positional-reasoning", 40.7, 0.5), 18: ("size-reasoning", 6.7, 0.3), 19: ("path-finding", 66.5, 2.3),
    20: ("agents-motivations", 0.0, 0.0),
}
SOURCES = [
    "MemN2N: Sukhbaatar, Szlam, Weston, Fergus, \"End-To-End Memory Networks\", NeurIPS 2015 "
    "(arXiv:1503.08895), 10k training, trained per task. Copied from the table in the README of "
    "https://github.com/ml-lab/rmn (Relational Memory Network), whose 20 values give the mean 6.6% and the 4 failed "
    "tasks it states; the paper's own table could not be checked here. Another copy (a re-implementation's notes) "
    "gives the same task 2, 3, 17, 19 and 16 figures and calls the column the paper's 10k `PE LS RN` one, but 0.9 "
    "(task 8) and 0.0 (task 10) against 0.8 and 2.4: those two cells are left \"—\".",
    "EntNet: Henaff, Weston, Szlam, Bordes, LeCun, \"Tracking the World State with Recurrent Entity Networks\", ICLR "
    "2017 (arXiv:1612.03969), Table 2, bAbI-10k: the \"EntNet (paper)\" column of the authors' code, "
    "https://github.com/facebookarchive/MemNN/blob/master/EntNet-babi/README.md (0 failed tasks, mean error 0.5%).",
]
DEFINITIONS = {
    "test error": "100% - answer accuracy on the task's test file: an answer is right when the model halts and the "
                  "word it emitted just before its first <HALT> is the answer (`rlf eval`); `rate [95% Wilson "
                  "interval] (errors/n)`",
    "trace accuracy": "every loop target (from the supporting facts: task 2 the holder, then the place; task 3 the "
                      "holder, the later place, then the earlier one) right and <HALT> at exactly the target loop; "
                      "`answer only`: the task's loop target is the answer alone (its test error says it all)",
    "questions": f"train / val / test: the validation split is the last {VAL_FRACTION:.0%} of the training file's "
                 "stories (bAbI-10k has none), whole stories, so a story's questions stay on one side",
    "train time": "the summed time of the training steps (without encoding and validation), and the steps run",
    "failed": f"test error above {FAILED:.0%} (the papers' criterion)",
    "stale": "a part whose key (config digest, the task's train and test file digests, this code's version and "
             "settings, seed) is no longer the key its task gets from this command: kept out of the table",
}


def babi_command(settings: dict) -> str:
    """The `rlf bench babi` command line of these settings."""
    args = ["rlf", "bench", "babi", "--data", settings["data"], "--tasks", settings["tasks"], "--preset",
            settings["preset"], "--results", settings["results"], "--doc", settings["doc"], "--out", settings["out"]]
    return shlex.join(args + (["--render"] if settings["render"] else []) + settings["overrides"])


def bench_config(preset: str, overrides: list[str]) -> TrainConfig:
    """The config every task trains with (its data files set per task)."""
    for item in overrides:
        if item.split("=", 1)[0].strip().replace("-", "_") in TOOL_KEYS:
            raise RLFError(f"override {item!r}: {', '.join(TOOL_KEYS)} are set per task from --data")
    return load_config(preset, overrides)


def task_files(data: Path, task: int) -> dict[str, Path]:
    """The train and test file of one task in the bAbI folder `data`."""
    try:
        return {split: babi_file(data, task, split) for split in ("train", "test")}
    except RLFError as e:
        raise RLFError(f"--data {data}: task {task}: {e}") from None


def part_key(cfg: TrainConfig, files: dict[str, Path]) -> dict:
    """The key a task's part gets now: what it is trained to, on which files, by which code, from which seed."""
    return {"code": VERSION, "config": cfg.digest(ignore=(*NOT_MEASURED, *TOOL_KEYS)), "seed": cfg.seed,
            "train": file_digest(files["train"]), "test": file_digest(files["test"]),
            "settings": {"val_fraction": VAL_FRACTION}}


def part_path(results: Path, task: int, seed: int) -> Path:
    """The file of a task's part: one per task and seed."""
    return Path(results) / f"qa{task:02d}-seed{seed}.json"


def read_babi_part(path: Path) -> dict:
    """A bAbI part file, checked: an error names the file and the field."""
    data = read_json_part(path, PART_FIELDS)
    check_fields(data["measured"], MEASURED_FIELDS, str(path), "measured.")
    if not 1 <= data["task"] <= 20:
        raise RLFError(f"{path}: field `task`: {data['task']} is not a bAbI task (1 to 20)")
    check_fields(data["value"], VALUE_FIELDS, str(path), "value.")
    if "refused" not in data["value"]:
        check_fields(data["value"], TRAINED_FIELDS, str(path), "value.")
    return data


def measure_task(task: int, files: dict[str, Path], cfg: TrainConfig, out: Path, base: Base, progress: bool
                 ) -> dict:
    """Read, split, train (or reuse, or resume) and evaluate one task; its part's value. A task the reader refuses
    gets {"refused": why} instead of the measurements."""
    value = {"train_file": files["train"].name, "test_file": files["test"].name}
    try:
        examples = {split: read_babi(files[split], task, split, base.tokenizer, max_tokens=cfg.target_tokens)
                    for split in ("train", "test")}
    except RLFError as e:  # the reason as the doc shows it: file names without the folder, no table-breaking `|`
        reason = str(e).replace(f"{files['train'].parent}/", "").replace("|", "/")
        log.warning("babi: task %d refused by the reader: %s", task, reason.splitlines()[0])
        return {**value, "refused": "\n".join(reason.splitlines()[:4])}
    train, val = split_last_stories(examples["train"], VAL_FRACTION)
    data_dir = out / "data" / f"qa{task}"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", val), ("test", examples["test"])):
        write_jsonl(split, data_dir / f"{name}.jsonl")
    cfg = dataclasses.replace(cfg, train_file=str(data_dir / "train.jsonl"), val_file=str(data_dir / "val.jsonl"))
    run_dir = out / f"qa{task}"
    summary = train_or_reuse(cfg, run_dir, base)
    res = evaluate(run_dir, data_files=[data_dir / "test.jsonl"], ablations="", run=load_run(run_dir, base=base),
                   progress=progress)
    m = res["splits"]["test"]["conditions"]["intact"]["overall"]
    answer = m["answer_acc"]
    return {**value, "n_train": len(train), "n_val": len(val), "n_test": len(examples["test"]),
            "loop_targets": any(len(ex.targets) > 1 for ex in examples["train"]),
            "test_error": rate(answer["n"] - answer["k"], answer["n"]), "answer_acc": answer,
            "trace_acc": m["trace_acc"], "halt_precision": m["halt_precision"],
            "train_seconds": summary["train_seconds"], "steps": summary["steps"], "stopped": summary["stopped"],
            "encode_seconds": summary.get("encode_seconds"), "weights": file_digest(run_dir / "model.safetensors")}


def run_babi(data: str | Path, tasks: str = "1-20", *, preset: str = "babi", overrides=(),
             results: str | Path = "docs/babi", doc: str | Path = "docs/babi.md", out: str | Path = "runs/babi",
             render: bool = False, progress: bool = True) -> dict:
    """Measure every task of `tasks` whose part is not committed with its key (with --render: none), then write the
    Markdown table from all the parts. Returns `render_babi`'s dict."""
    data, results, doc, out = Path(data), Path(results), Path(doc), Path(out)
    if not data.is_dir():
        raise RLFError(f"--data {data}: not a directory; give the folder of the bAbI files, e.g. "
                       "../shared/data/babi/en-10k")
    ids = parse_int_list(tasks, "--tasks", 1, 20)
    cfg = bench_config(preset, list(overrides))
    files = {} if render else {t: task_files(data, t) for t in ids}  # every file found before anything trains
    command = babi_command({"data": str(data), "tasks": tasks, "preset": preset, "results": str(results),
                            "doc": str(doc), "out": str(out), "render": render, "overrides": list(overrides)})
    base = None
    for i, t in enumerate(files, 1):
        key, path = part_key(cfg, files[t]), part_path(results, t, cfg.seed)
        if path.is_file() and read_babi_part(path)["key"] == key:
            log.info("babi [%d/%d] task %d: committed with its key; reused", i, len(ids), t)
            continue
        log.info("babi [%d/%d] task %d: measuring", i, len(ids), t)
        if base is None:
            base = load_base(cfg.base, cfg.encoder_layers, device=cfg.device, loop_layers=cfg.loop_layers)
        value = measure_task(t, files[t], cfg, out, base, progress)
        measured = provenance(base.device, command, value.pop("weights", None))
        write_json(path, {"task": t, "spec": {"preset": preset, "overrides": list(overrides)}, "key": key,
                          "measured": measured, "value": value})
    return render_babi(doc, results, data, cfg, command)


# ----------------------------------------------------------------------------------------------- the table

def load_babi_parts(results: Path, data: Path, cfg: TrainConfig) -> list[dict]:
    """Every part under `results`, each with `path` and `changed`: the key fields that differ from the key its task
    gets now from `cfg` and the files in `data` (empty: the part is current)."""
    parts = []
    for path in sorted(Path(results).glob("qa*.json")):
        part = read_babi_part(path)
        try:
            now = part_key(cfg, task_files(data, part["task"]))
        except RLFError:
            changed = [f"data: no files of task {part['task']} in {data}"]
        else:
            changed = changed_fields(now, part["key"])
        parts.append({**part, "path": path, "changed": changed})
    return parts


def task_row(task: int, part: dict | None, stale: bool) -> list[str]:
    """A task's row of the table: its current part's figures (or why there are none) and the papers'."""
    name, memn2n, entnet = PUBLISHED[task]
    papers = ["—" if e is None else f"{e:.1f}" for e in (memn2n, entnet)]
    if part is None:
        return [str(task), name, "—", "stale (below)" if stale else "not measured", "—", "—", *papers]
    v = part["value"]
    if "refused" in v:
        reason = v["refused"].splitlines()
        why = reason[1].strip() if len(reason) > 1 else reason[0]
        return [str(task), name, "—", f"refused by the reader: {reason[0].split(': ', 1)[-1]}; {why}", "—", "—",
                *papers]
    trace = cell(v["trace_acc"]) if v["loop_targets"] else "answer only"
    other = "" if v["train_file"].endswith("_train.txt") else f" (from `{v['train_file']}`)"  # task 3's train-1k
    return [str(task), name, f"{v['n_train']:,} / {v['n_val']:,} / {v['n_test']:,}{other}",
            fmt_rate(v["test_error"]), trace, f"{fmt_seconds(v['train_seconds'])}, {v['steps']:,} steps", *papers]


def render_babi(doc: str | Path, results: str | Path, data: str | Path, cfg: TrainConfig, command: str) -> dict:
    """Write the Markdown table at `doc` from the parts in `results` alone (checked against `cfg` and the files in
    `data`). Returns {"doc", "results", "parts"}."""
    doc, results = Path(doc), Path(results)
    parts = load_babi_parts(results, Path(data), cfg)
    current = {p["task"]: p for p in parts if not p["changed"]}
    stale = [p for p in parts if p["changed"]]
    measured = [p for p in current.values() if "refused" not in p["value"]]
    failed = [p["task"] for p in measured if p["value"]["test_error"]["rate"] > FAILED]
    commands = list(dict.fromkeys(p["measured"]["command"] for p in parts))
    rows = [task_row(t, current.get(t), any(p["task"] == t for p in stale)) for t in range(1, 21)]
    out = [
        "# bAbI-10k: test error per task\n",
        f"Generated by `{command}` from the result parts committed in `{results}/` (one JSON file per task), not "
        "from run directories; do not edit by hand.\n",
        f"- parts: {len(current)} current, {len(stale)} stale" + (" (not in the table; listed below)" if stale else ""),
        f"- tasks measured: {len(measured)} of 20; refused by the reader: {len(current) - len(measured)}; failed "
        f"(test error > {FAILED:.0%}): {len(failed)}" + (f" (tasks {', '.join(map(str, sorted(failed)))})" if failed
                                                          else ""),
        "- commands that measured them: " + ("; ".join(f"({i}) `{c}`" for i, c in enumerate(commands, 1)) or "none"),
        "- **the MemN2N and EntNet columns are figures from the papers** (sources below), not measured here; every "
        "other column is measured by this tool.\n",
        md_table(["task", "name", "questions (train / val / test)", "test error", "trace accuracy", "train time",
                  "MemN2N error % (paper)", "EntNet error % (paper)"], rows),
        "## Published figures\n", "".join(f"- {s}\n" for s in SOURCES),
    ]
    if current:
        out += ["## Measured: when, where and on what\n", md_table(
            ["task", "settings", "files", "measured", "machine", "versions", "command"],
            [[str(t), f"`--preset {p['spec']['preset']}` `{' '.join(p['spec']['overrides'])}`",
              f"`{p['value']['train_file']}`, `{p['value']['test_file']}`", p["measured"]["date"].replace("T", " "),
              machine_text(p["measured"]["machine"]),
              ", ".join(f"{k} {v}" for k, v in p["measured"]["versions"].items()),
              str(commands.index(p["measured"]["command"]) + 1)] for t, p in sorted(current.items())])]
    if stale:
        out += ["## Stale parts\n", "Measured under a key that no longer matches; none of them is in the table.\n",
                md_table(["part", "task", "measured", "what no longer matches"],
                         [[f"`{p['path'].name}`", str(p["task"]), p["measured"]["date"].replace("T", " "),
                           "; ".join(p["changed"])] for p in stale])]
    out += ["## Definitions\n", "".join(f"- **{k}**: {v}\n" for k, v in DEFINITIONS.items())]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(out))
    log.info("babi: %s written from %d parts in %s", doc, len(parts), results)
    return {"doc": str(doc), "results": str(results), "parts": parts}
