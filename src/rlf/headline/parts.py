"""The committed result parts of `rlf bench headline`: one small JSON file per measured piece, in a folder `results/`
beside RESULTS.md (docs/results/): a model's main measurement and its loop-clock probe per held-out hop count, its
memory and training figures, the no-loop baseline, an ablation variant and the base alone per hop count.

Each part is keyed by what produced it: the digest of its config, the digest of its held-out set (one hop count, so
adding a hop count later leaves the others standing), the version of its measurement code and what it was measured
with, and the training seed; and it records when, on what machine and by which command it was measured. A part
whose key is the key its job gets now is reused instead of retraining; RESULTS.md is rendered from the parts alone,
and a part whose key no longer matches (a changed config, held-out set or measurement code) is shown as stale.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from rlf.errors import RLFError
from rlf.headline.measure import VERSIONS, settings
from rlf.headline.plan import ROLES, HeldOut, Job
from rlf.train import _write_atomic

PARTS_FOLDER = "results"  # the parts live in this folder beside RESULTS.md (docs/results/)
HOP_KINDS = {"main": ("main", "clock"), "no_loop": ("no_loop",), "ablation": ("ablation",),
             "base_alone": ("base_alone",)}  # the parts of each role measured per held-out hop count
RUN_KINDS = {"main": ("memory", "training")}  # ... and those measured once on the run
NOT_MEASURED = ("device", "cache_dir", "log_every", "ckpt_every")  # config keys that change where a run trains and
# how often it reports, not what it is trained to: left out of a part's config digest (max_steps is in it)
PART_FIELDS = {"kind": str, "hops": (int, type(None)), "job": dict, "key": dict, "measured": dict, "value": dict}
JOB_FIELDS = {"name": str, "role": str, "protocol": str, "core": str, "variant": str, "preset": str,
              "overrides": list, "n": int, "quick": bool}
MEASURED_FIELDS = {"date": str, "machine": dict, "versions": dict, "command": str, "weights": (str, type(None))}


def planned(job: Job, hops: list[int]) -> list[tuple[str, int | None]]:
    """The (kind, hop count) of every part of a job measured on `hops` (hop count None: measured on the run)."""
    kinds = [k for k in HOP_KINDS[job.role] if not (k == "clock" and job.cfg.loop_pos == "none")]  # no clock to move
    return [(k, h) for k in kinds for h in hops] + [(k, None) for k in RUN_KINDS.get(job.role, ())]


def config_digest(job: Job) -> str:
    """For a trained model every setting that changes what it is trained to (how long included); for the base alone
    its base and template."""
    if job.role == "base_alone":
        return hashlib.sha256(json.dumps([job.cfg.base, job.cfg.template]).encode()).hexdigest()[:16]
    return job.cfg.digest(ignore=NOT_MEASURED)


def part_key(job: Job, kind: str, hops: int | None, heldout: HeldOut) -> dict:
    """The key a part of `job` gets now, as it reads back from its file."""
    in_distribution = hops is not None and hops in heldout.train_hops(job.cfg)
    key = {"kind": kind, "code": VERSIONS[kind], "config": config_digest(job),
           "seed": None if job.role == "base_alone" else job.cfg.seed,
           "eval_set": None if hops is None else heldout.digest(job.cfg, hops, job.n),
           "settings": settings(kind, in_distribution, job.quick)}
    return json.loads(json.dumps(key))


def parts_folder(docs: Path) -> Path:
    """The folder of the parts RESULTS.md at `docs` is rendered from."""
    return Path(docs).parent / PARTS_FOLDER


def part_path(parts_dir: Path, job: Job, kind: str, hops: int | None) -> Path:
    return Path(parts_dir) / job.part_dir / (f"{kind}.json" if hops is None else f"{kind}-{hops:02d}hops.json")


def provenance(device: torch.device | str, command: str, weights: str | None) -> dict:
    """When, where and by what a part was measured: date, platform, CPU, threads, accelerator, versions, command,
    and the digest of the weights measured (None for the base alone)."""
    import transformers

    import rlf

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name()
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "transformers": transformers.__version__, "rlf": rlf.__version__}
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine, "versions": versions,
            "command": command, "weights": weights}


def write_json(path: Path, data: dict) -> None:
    """A part file (any committed JSON result), written atomically; its folder is made if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(Path(path), json.dumps(data, indent=1) + "\n")


def write_part(path: Path, job: Job, kind: str, hops: int | None, key: dict, value: dict, measured: dict) -> None:
    write_json(path, {"kind": kind, "hops": hops, "job": job.spec(), "key": key, "measured": measured,
                      "value": value})


def check_fields(data: dict, fields: dict, where: str, prefix: str = "") -> None:
    """Every field of `fields` ({name: type or types}) present in `data` with its type; an error names it."""
    for name, kind in fields.items():
        if name not in data:
            raise RLFError(f"{where}: field `{prefix}{name}` missing")
        if not isinstance(data[name], kind) or isinstance(data[name], bool) is not (kind is bool):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise RLFError(f"{where}: field `{prefix}{name}`: expected {expected}, got {type(data[name]).__name__}")


def read_json_part(path: Path, fields: dict) -> dict:
    """A committed JSON result part with `fields` (as `check_fields`): an error names the file and the field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RLFError(f"{path}: not a readable JSON result part ({e})") from None
    if not isinstance(data, dict):
        raise RLFError(f"{path}: expected a mapping with {', '.join(fields)}, got {type(data).__name__}")
    check_fields(data, fields, str(path))
    return data


def read_part(path: Path) -> dict:
    """A part file, checked: an error names the file and the field."""
    data = read_json_part(path, PART_FIELDS)
    check_fields(data["measured"], MEASURED_FIELDS, str(path), "measured.")
    if data["kind"] not in VERSIONS:
        raise RLFError(f"{path}: field `kind`: {data['kind']!r} is not one of {', '.join(VERSIONS)}")
    if (data["hops"] is None) is not (data["kind"] in sum(RUN_KINDS.values(), ())):
        raise RLFError(f"{path}: field `hops`: a {data['kind']} part is measured "
                       + ("per hop count (hops a number)" if data["hops"] is None else "on the run (hops null)"))
    job = data["job"]
    unknown = sorted(set(job) - set(JOB_FIELDS))
    if unknown:
        raise RLFError(f"{path}: field `job`: unknown keys {unknown}; valid: {', '.join(JOB_FIELDS)}")
    check_fields(job, JOB_FIELDS, str(path), "job.")
    if job["role"] not in ROLES:
        raise RLFError(f"{path}: field `job.role`: {job['role']!r} is not one of {', '.join(ROLES)}")
    if not all(isinstance(o, str) and "=" in o for o in job["overrides"]):
        raise RLFError(f"{path}: field `job.overrides`: expected a list of key=value strings")
    if job["n"] <= 0:
        raise RLFError(f"{path}: field `job.n`: {job['n']} held-out chains per hop count; must be positive")
    return data


def stored_key(path: Path) -> dict | None:
    """The key of the part in `path` (None when there is none)."""
    return read_part(path)["key"] if path.is_file() else None


def changed_fields(now: dict, stored: dict) -> list[str]:
    """The fields of a part's key that differ between the key it gets now and the one it was stored with."""
    return [f for f in dict.fromkeys([*now, *stored]) if now.get(f) != stored.get(f)]


@dataclass
class Part:
    """A committed part, read back, with what differs between its key and the key its job gets now."""

    path: Path
    kind: str
    hops: int | None
    spec: dict  # its job, as recorded
    job: Job | None  # that job made again (None when its config no longer loads)
    key: dict
    measured: dict
    value: dict
    changed: list[str]  # the key fields that differ (or why no key can be made); empty: the part is current


def load_parts(parts_dir: Path, heldout: HeldOut) -> list[Part]:
    """Every part under `parts_dir`, each checked against the key its job gets now."""
    parts = []
    for path in sorted(Path(parts_dir).rglob("*.json")):
        data = read_part(path)
        try:
            job = Job(**data["job"])
        except RLFError as e:
            job, changed = None, [f"config no longer loads ({e})"]
        else:
            now = part_key(job, data["kind"], data["hops"], heldout)
            changed = changed_fields(now, data["key"])
        parts.append(Part(path, data["kind"], data["hops"], data["job"], job, data["key"], data["measured"],
                          data["value"], changed))
    latest: dict[tuple, Part] = {}  # a job measured again with another config: its older parts are superseded
    for p in parts:
        if not p.changed:
            group = (p.spec["role"], p.job.part_dir, p.spec["variant"])
            if group not in latest or p.measured["date"] > latest[group].measured["date"]:
                latest[group] = p
    for p in parts:
        group = (p.spec["role"], p.job.part_dir, p.spec["variant"]) if p.job else None
        if not p.changed and p.key["config"] != latest[group].key["config"]:
            p.changed.append("config: the job was measured again later with another config")
    return parts
