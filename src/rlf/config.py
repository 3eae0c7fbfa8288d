"""The training configuration: one typed dataclass, presets as YAML files, `key=value` overrides.

Unknown keys and wrong types are errors that name the key, the file and what would be valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from rlf.errors import RLFError


@dataclass
class TrainConfig:
    # base and encoding
    base: str = "smollm2-135m"
    encoder_layers: int | None = 6  # the seeds' frozen bottom split; None = all layers
    template: str = "{prompt}\nAnswer:"
    storage: Literal["float16", "bfloat16"] = "float16"
    cache_dir: str = "cache/encodings"
    # data: generated from `task` unless train_file/val_file are given
    task: str = "chain"
    order: Literal["forward", "backward"] = "forward"
    distractors: int | str = 0  # or a range such as "2-6": each example draws its count from it
    # chain: the held-out sets' distractors (rlf eval --hops, the headline, sweep dev sets); None = `distractors`
    eval_distractors: int | str | None = None
    name_pool: int = 0  # chain: draw variable names from the first N of the pool (0 = all)
    value_pool: int = 0  # chain: draw values from the first N of the pool (0 = all)
    # graph: one-token concept words (vocab), or invented ProsQA-style ones of 2 to target_tokens tokens (prosqa)
    graph_words: Literal["vocab", "prosqa"] = "vocab"
    hops: str = "1-5"
    n_train: int = 20000
    n_val: int = 500
    data_seed: int = 0
    train_file: str | None = None
    val_file: str | None = None
    # model (see rlf.model.RLFConfig)
    core: Literal["mamba2", "transformer", "mamba1"] = "mamba2"
    lifeline: Literal["vector", "scalar", "none"] = "vector"
    loop_pos: Literal["rope", "learned", "none"] = "rope"
    max_loops: int = 16
    train_head: bool = False
    scratchpad: int = 0
    bridge_rank: int = 0
    core_dim: int = 0  # the core's width: 0 = the base's; k < d loops a k-wide core between d->k and k->d maps
    loop_span: Literal["all", "answer"] = "all"  # each loop updates every position, or the answer one (mamba2, transformer)
    core_pos: Literal["none", "rope", "conv"] = "none"  # transformer core: rotary positions, or a causal conv of width 4
    target_tokens: int = 1  # K: a loop target may be a word of up to K base tokens, read from K slots (1 = one token)
    feedback: Literal["state", "pointer"] = "state"  # loop k >= 1 starts from the last state, or its word's prompt key
    readout: Literal["head", "copy"] = "head"  # copy: a loop names a prompt word or <HALT>, weighed by core attention
    chunk_size: int = 64
    loop_layers: int = 0  # the seeds' full recipe: this many base layers above encoder_layers run inside the loop
    lora_rank: int = 8  # ... adapted with LoRA of this rank and alpha (only the adapters train)
    lora_alpha: float = 16.0
    # answer_once: no loop (a baseline); copy: a read-out warm-up phase, one loop, every sampled prompt position
    # must read out its own token through the head (dense: copy_positions targets per prompt, no chain targets);
    # lookup, chains: warm-up phases on chain prompts, every reference to an assigned name asks its first step
    # (one loop over the prompt) or its whole chain (the prompt cut after the reference, looped as the task is)
    supervision: Literal["per_loop", "final", "answer_once", "copy", "lookup", "chains"] = "per_loop"
    copy_positions: int = 8
    extra_halt_loops: int = 1  # loops past the longest trace in a batch, all <HALT>: teaches halting to stick
    # optimisation
    seed: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 2000
    decay_steps: int = 0  # the cosine's length, when it is not the run's (or phase's) steps: past it, lr stays at 10%
    grad_clip: float = 1.0
    # bfloat16 autocast on the run's device, in training steps and in encoding the prompts (on a CPU with AVX512-BF16
    # too: benchmarks/bench_bf16.py); parameters, the gate too, stay float32
    bf16: bool = False
    device: str = "auto"
    # validation, early stop, checkpoints, logging
    val_every: int = 50
    early_stop_acc: float = 0.99  # stop when val trace accuracy >= this ...
    early_stop_patience: int = 2  # ... at this many consecutive validations (0 = never stop early)
    ckpt_every: int = 100
    log_every: int = 10
    max_bad_steps: int = 20  # consecutive non-finite losses/gradients before the run stops
    # phases: [{name, steps, overrides: {key: value}}, ...] trained in order, each with its own warmup + cosine
    # schedule over its steps and the optimizer state carried on; the last phase runs to max_steps (its `steps`
    # may be left out). Overrides change data, supervision and optimisation, never the model's shape.
    phases: list | None = None

    def __post_init__(self):
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type, "config")
            _check_value(f.name, getattr(self, f.name), "config")
            if float in typing.get_args(_HINTS[f.name]) + (_HINTS[f.name],) and type(getattr(self, f.name)) is int:
                setattr(self, f.name, float(getattr(self, f.name)))  # `lr: 1` and `lr: 1.0` are one config
        if self.phases is not None:
            self.phases = check_phases(self.phases, self.max_steps)
        if self.eval_distractors is not None and self.task != "chain":
            raise RLFError(f"config: eval_distractors={self.eval_distractors!r} sets the held-out chains' distractors; "
                           f"task={self.task!r} has none (leave it null)")
        if self.graph_words == "prosqa" and self.target_tokens < 2:
            raise RLFError("config: graph_words=prosqa needs target_tokens >= 2 (its words are 2 to target_tokens "
                           "tokens; ProsQA's own need 4)")
        if self.loop_layers and self.encoder_layers is None:
            raise RLFError(f"config: loop_layers={self.loop_layers} needs encoder_layers set (the bottom layers, "
                           "encoded once and cached; the loop runs the next loop_layers), e.g. encoder_layers=6")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, ignore: tuple[str, ...] = ("max_steps", "device", "val_every", "ckpt_every", "log_every",
                                                "cache_dir", "max_bad_steps", "early_stop_acc",
                                                "early_stop_patience", "eval_distractors")) -> str:
        """A hash of the settings that change what is trained (not how long, where, or how often it reports).

        Settings at their default are left out, so a key added in a later version (at its default) leaves the
        digest of every existing config, and every measurement cached under it, unchanged."""
        defaults = {f.name: f.default for f in fields(self)}
        d = {k: v for k, v in self.to_dict().items() if k not in ignore and v != defaults[k]}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_HINTS = typing.get_type_hints(TrainConfig)

# the keys that make a training set: a phase that sets any of them trains on data of its own
DATA_KEYS = ("task", "order", "distractors", "name_pool", "value_pool", "graph_words", "hops", "n_train", "data_seed",
             "train_file")
# what a phase may change: the data, the supervision and the optimisation, never a parameter's shape or the encoder
PHASE_KEYS = (*DATA_KEYS, "supervision", "copy_positions", "extra_halt_loops", "lr", "weight_decay", "warmup_steps", "decay_steps",
              "grad_clip", "batch_size")


def check_phases(phases: list, max_steps: int) -> list[dict]:
    """Normalise a phase list to [{name, steps, overrides: {key: typed value}}]; refuse what is wrong, naming the phase
    and key. The last phase's steps default to what is left of max_steps (left out, it follows a later max_steps: a
    finished run can be extended); the steps must add up to max_steps."""
    if not phases:
        raise RLFError("config: phases must list at least one phase (or be null)")
    out, names, total = [], set(), 0
    for i, ph in enumerate(phases):
        where = f"config: phases[{i}]"
        if not isinstance(ph, dict) or not isinstance(ph.get("name"), str) or not ph["name"].strip():
            raise RLFError(f"{where}: each phase is a mapping with a `name` (and `steps`, `overrides`)")
        name = ph["name"]
        where = f"config: phase {name!r}"
        if set(ph) - {"name", "steps", "overrides"}:
            raise RLFError(f"{where}: unknown keys {sorted(set(ph) - {'name', 'steps', 'overrides'})}; "
                           "a phase has name, steps, overrides")
        if name in names or not name.replace("-", "").replace("_", "").isalnum():
            raise RLFError(f"{where}: " + ("duplicate phase name" if name in names else
                                           "a name is letters, digits, - and _ (it names the phase's data file)"))
        names.add(name)
        last = i == len(phases) - 1
        steps = ph.get("steps", max_steps - total if last else None)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
            raise RLFError(f"{where}: steps={steps!r}: must be a positive number of steps"
                           + (" (the last phase runs to max_steps, which leaves none)" if last else ""))
        total += steps
        if last and total != max_steps:
            raise RLFError(f"config: the phases' steps add up to {total}, max_steps is {max_steps}: "
                           "leave out the last phase's steps, or make them match")
        raw = ph.get("overrides") or {}
        if isinstance(raw, list):  # ["key=value", ...] as on the command line
            if not all(isinstance(item, str) and "=" in item for item in raw):
                raise RLFError(f"{where}: overrides must be a mapping or a list of key=value strings")
            raw = dict(item.split("=", 1) for item in raw)
        if not isinstance(raw, dict):
            raise RLFError(f"{where}: overrides must be a mapping of config keys")
        overrides = {}
        for k, v in raw.items():
            if k not in PHASE_KEYS:
                raise RLFError(f"{where}: key {k!r} cannot change between phases; a phase may set "
                               f"{', '.join(PHASE_KEYS)}")
            v = _file_value(k, v, where)
            overrides[k] = float(v) if float in (typing.get_args(_HINTS[k]) or (_HINTS[k],)) and type(v) is int else v
        out.append({"name": name, **({"steps": steps} if "steps" in ph else {}), "overrides": overrides})
    return out


def _check_type(name: str, value, declared, where: str) -> None:
    hint = _HINTS[name]
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in args:
            raise RLFError(f"{where}: {name}={value!r}: use one of {', '.join(map(str, args))}")
        return
    allowed = tuple(a for a in args if a is not type(None)) if args else (hint,)
    if value is None and type(None) in args:
        return
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(a.__name__ for a in allowed) + (" or null" if type(None) in args else "")
        raise RLFError(f"{where}: {name}={value!r}: expected {names}")


_POSITIVE = ("copy_positions", "n_train", "n_val", "batch_size", "max_steps", "val_every", "ckpt_every", "log_every",
             "max_loops", "chunk_size", "max_bad_steps", "encoder_layers", "lr", "grad_clip", "lora_rank", "lora_alpha",
             "target_tokens")
_NON_NEGATIVE = ("core_dim", "distractors", "eval_distractors", "scratchpad", "bridge_rank", "loop_layers",
                 "warmup_steps", "decay_steps", "extra_halt_loops", "early_stop_patience", "weight_decay")


def _check_value(name: str, value, where: str) -> None:
    """Checks beyond the type: finite numbers, positive counts, a parseable hop list (so `hops=5-1` fails now)."""
    if name in ("hops", "distractors", "eval_distractors") and isinstance(value, str):  # a list such as 1-5,8
        from rlf.tasks.suite import MAX_HOPS, parse_int_list

        try:
            parse_int_list(value, name, 1 if name == "hops" else 0, MAX_HOPS)
        except RLFError as e:
            raise RLFError(f"{where}: {e}") from None
        return
    if value is None or isinstance(value, bool) or isinstance(value, str):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise RLFError(f"{where}: {name}={value}: must be a finite number")
    if name in _POSITIVE and value <= 0:
        raise RLFError(f"{where}: {name}={value}: must be positive")
    if name in _NON_NEGATIVE and value < 0:
        raise RLFError(f"{where}: {name}={value}: must be 0 or more")
    if name == "early_stop_acc" and not 0 <= value <= 1:
        raise RLFError(f"{where}: {name}={value}: must be between 0 and 1")


def _parse_value(name: str, text: str):
    """Turn an override string into the field's type: numbers, true/false, null, or the text itself."""
    args = typing.get_args(_HINTS[name]) or (_HINTS[name],)
    if type(None) in args and text.strip().lower() in ("null", "none"):
        return None
    if list in args:  # phases=[{name: warm, steps: 200, overrides: {hops: "1"}}, {name: main}]
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RLFError(f"{name}={text!r}: not a YAML list ({e})") from None
    for kind in (bool, int, float):
        if kind in args:
            if kind is bool:
                low = text.strip().lower()
                if low in ("true", "false", "1", "0", "yes", "no"):
                    return low in ("true", "1", "yes")
                return text
            try:
                return kind(text)
            except ValueError:
                continue
    return text


def _file_value(key: str, value, where: str):
    """A value read from YAML, checked: text for a non-text key is parsed as an override would be (YAML reads
    `1e-3` as text), then its type and range are checked."""
    if isinstance(value, str) and str not in (typing.get_args(_HINTS[key]) or (_HINTS[key],)):
        value = _parse_value(key, value)
    _check_type(key, value, None, where)
    _check_value(key, value, where)
    return value


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("rlf.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text() if isinstance(path, (str, Path)) else path.read_text())
    except yaml.YAMLError as e:
        raise RLFError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise RLFError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except OSError as e:
        raise RLFError(f"{path}: cannot read ({e.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RLFError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(preset: str | None = "default", overrides: list[str] | tuple = (), config_file: str | None = None
                ) -> TrainConfig:
    """A preset (or a YAML file), then `key=value` overrides; every key checked against TrainConfig."""
    known = {f.name for f in fields(TrainConfig)}
    values: dict = {}
    sources = []
    if config_file is not None:
        if not Path(config_file).is_file():
            raise RLFError(f"--config {config_file}: no such file")
        sources.append((config_file, _read_yaml(config_file)))
    elif preset is not None:
        if preset not in preset_names():
            raise RLFError(f"--preset {preset}: unknown preset; available: {', '.join(preset_names())}")
        sources.append((f"preset {preset}", _read_yaml(resources.files("rlf.configs") / f"{preset}.yaml")))
    for where, data in sources:
        for k, v in data.items():
            if k not in known:
                raise RLFError(f"{where}: unknown key {k!r}; valid keys: {', '.join(sorted(known))}")
            values[k] = _file_value(k, v, where)
    for item in overrides:
        if "=" not in item:
            raise RLFError(f"override {item!r}: write key=value (e.g. lr=1e-3)")
        k, text = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in known:
            raise RLFError(f"override {item!r}: unknown key {k!r}; valid keys: {', '.join(sorted(known))}")
        v = _parse_value(k, text)
        _check_type(k, v, None, f"override {item!r}")
        _check_value(k, v, f"override {item!r}")
        values[k] = v
    return TrainConfig(**values)


def read_run_config(run: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run directory's config.json, or an RLFError saying why it cannot be used."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise RLFError(f"{run}: not a run directory (no config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RLFError(f"{path}: not valid JSON ({e}); the run's config is damaged") from None
    if not isinstance(data, dict):
        raise RLFError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise RLFError(f"{path}: unknown keys {unknown} (written by another version of rlf?)")
    try:
        return TrainConfig(**data)
    except RLFError as e:
        raise RLFError(f"{path}: {e}") from None
