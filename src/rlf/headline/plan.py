"""What `rlf bench headline` trains and measures: the jobs (per protocol and core the main model and the no-loop
baseline, the base alone per protocol, the ablation variants of the first core and protocol) and the held-out sets
each job is measured on, made from its config alone, so a committed part's key can be checked without its run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from rlf.base import load_tokenizer
from rlf.config import DATA_KEYS, TrainConfig, load_config
from rlf.errors import RLFError
from rlf.evaluate import heldout_examples
from rlf.tasks import Example
from rlf.train import make_data

PROTOCOLS = {  # config overrides of each protocol; backward also gets --distractors (see protocol_overrides)
    "forward": ["order=forward"],
    "backward": ["order=backward"],
}
CORES = ("mamba2", "transformer", "mamba1")
ABLATIONS = ("lifeline=scalar", "lifeline=none", "loop_pos=learned", "loop_pos=learned max_loops=4", "loop_pos=none",
             "supervision=final")  # max_loops=4: the learned loop position stops at loop 4: no clock to count on past it
NO_LOOP = "supervision=answer_once"
TOOL_KEYS = ("core", "order", "distractors", "eval_distractors")  # set by --cores, --protocols, --distractors
ROLES = ("main", "no_loop", "ablation", "base_alone")

SIZES = {
    "full": {"preset": "default", "train": [], "n": 1000, "ood_hops": "6,8,10,16,32",
             "memory_loops": (1, 2, 4, 8, 16, 32, 64), "memory_batch": 16, "fresh_memory": True,
             "out": "runs/headline", "docs": "docs/RESULTS.md"},
    "quick": {"preset": "tiny", "train": ["n_train=96", "n_val=16", "hops=1-2", "batch_size=16", "max_steps=6",
                                          "warmup_steps=2", "val_every=3", "ckpt_every=6", "log_every=3"],
              "n": 6, "ood_hops": "3,4", "memory_loops": (1, 2, 4), "memory_batch": 4,
              "fresh_memory": False,  # in this process: a fresh one costs ~10 s of imports, and quick numbers are moot
              "out": "runs/headline-quick",
              "docs": None},  # None: RESULTS.md inside --out (a quick run must not overwrite docs/RESULTS.md)
}


def protocol_overrides(protocol: str, distractors: int, cfg: TrainConfig) -> list[str]:
    """The config overrides of a protocol for a config `cfg` (the preset with the shared overrides): backward's held-out
    sets hold `distractors` distractor chains, and so do its training chains, unless `cfg` sets `eval_distractors`:
    a config that does (the `pointer` preset) trains on its own `distractors`, larger memories than the protocol's."""
    if protocol != "backward":
        return PROTOCOLS[protocol]
    own = cfg.eval_distractors is not None
    return PROTOCOLS[protocol] + [f"eval_distractors={distractors}"] + ([] if own else [f"distractors={distractors}"])


@dataclass
class Job:
    """One trained model of the headline (or the base alone of a protocol): what it is, and its config as
    `load_config(preset, overrides)`; with `n` (held-out chains per hop count) and `quick` it fixes its parts' keys."""

    name: str  # its run directory inside --out
    role: str  # one of ROLES
    protocol: str
    core: str
    preset: str
    overrides: list[str]
    n: int
    quick: bool
    variant: str = ""
    cfg: TrainConfig = field(init=False, repr=False)

    def __post_init__(self):
        self.cfg = load_config(self.preset, self.overrides)
        if self.cfg.target_tokens != 1:  # its measurements read one token per loop (single-token chains)
            raise RLFError(f"rlf bench headline: target_tokens={self.cfg.target_tokens}: the headline measures "
                           "single-token chains, one token per loop; leave target_tokens at 1")

    @property
    def part_dir(self) -> str:
        """The folder of its parts: a trained model's carries its training seed; the base alone has none."""
        return self.name if self.role == "base_alone" else f"{self.name}-seed{self.cfg.seed}"

    def spec(self) -> dict:
        """What a part records of its job: enough to make the job, and so the part's key, again."""
        return {"name": self.name, "role": self.role, "protocol": self.protocol, "core": self.core,
                "variant": self.variant, "preset": self.preset, "overrides": list(self.overrides), "n": self.n,
                "quick": self.quick}


def parse_ablations(text: str | None) -> list[str]:
    """`on`/`all` -> every default variant, `off`/`none`/'' -> none, else a comma list of variants, each one or
    more space-separated key=value config overrides (`loop_pos=learned max_loops=4`)."""
    text = (text or "").strip()
    if text in ("on", "all"):
        return list(ABLATIONS)
    if text in ("", "off", "none"):
        return []
    items = [" ".join(t.split()) for t in text.split(",") if t.strip()]
    for item in items:
        for override in item.split():
            key = override.split("=", 1)[0].strip().replace("-", "_")
            if "=" not in override or key in TOOL_KEYS:
                raise RLFError(f"--ablations {item!r}: each variant is config overrides key=value (not "
                               f"{', '.join(TOOL_KEYS)}), e.g. {','.join(ABLATIONS)}; or on / off")
        load_config(None, item.split())  # checks the keys and the values
    return items


def _slug(override: str) -> str:
    return override.replace("=", "-").replace("/", "_").replace(" ", "+")


def plan_jobs(preset: str, overrides: list[str], protocols: list[str], cores: list[str], ablations: list[str],
              distractors: int, n: int, quick: bool) -> list[Job]:
    """The jobs: per protocol and core the main model and the no-loop baseline, then the ablation variants of the
    first core and protocol (a variant equal to the main config is the main run), then the base alone per protocol
    (on the held-out sets of the protocol's first core)."""
    for item in overrides:
        if item.split("=", 1)[0].strip().replace("-", "_") in TOOL_KEYS:
            raise RLFError(f"override {item!r}: {', '.join(TOOL_KEYS)} are set by --cores, --protocols and "
                           "--distractors")
    bad = [p for p in protocols if p not in PROTOCOLS] or [c for c in cores if c not in CORES]
    if bad or not protocols or not cores:
        raise RLFError(f"--protocols/--cores {','.join(bad) or '(empty)'}: protocols are {', '.join(PROTOCOLS)}; "
                       f"cores are {', '.join(CORES)}")

    shared = load_config(preset, overrides)

    def job(name: str, role: str, protocol: str, core: str, extra: list[str], variant: str = "") -> Job:
        return Job(name, role, protocol, core, preset,
                   [*overrides, *protocol_overrides(protocol, distractors, shared), f"core={core}", *extra], n, quick,
                   variant)

    jobs = []
    for p in protocols:
        for c in cores:
            jobs += [job(f"{c}-{p}", "main", p, c, []), job(f"{c}-{p}-noloop", "no_loop", p, c, [NO_LOOP], NO_LOOP)]
    main = jobs[0]
    for variant in ablations:
        cfg = load_config(preset, [*main.overrides, *variant.split()])
        name = main.name if cfg.to_dict() == main.cfg.to_dict() else f"{main.name}-{_slug(variant)}"
        jobs.append(job(name, "ablation", main.protocol, main.core, variant.split(), variant))
    jobs += [job(f"base-alone-{p}", "base_alone", p, cores[0], []) for p in protocols]
    return jobs


class HeldOut:
    """The held-out chains of a config: per hop count `n` examples from a seed no training split uses, none of them
    a prompt of the config's training or validation data (the sets `rlf eval` makes for its run). Tokenizers and
    training data are made once per base and per data config."""

    def __init__(self):
        self._tokenizers: dict = {}
        self._data: dict[str, tuple[list[Example], set[str]]] = {}
        self._sets: dict[tuple, list[Example]] = {}

    def _data_key(self, cfg: TrainConfig) -> str:
        return json.dumps({k: getattr(cfg, k) for k in (*DATA_KEYS, "n_val", "val_file", "base")}, sort_keys=True)

    def _training(self, cfg: TrainConfig) -> tuple[list[Example], set[str]]:
        """The config's training examples and the prompts of its training and validation data."""
        key = self._data_key(cfg)
        if key not in self._data:
            train, val = make_data(cfg, self.tokenizer(cfg.base))
            self._data[key] = train, {ex.prompt for ex in train + val}
        return self._data[key]

    def tokenizer(self, spec: str):
        if spec not in self._tokenizers:
            self._tokenizers[spec] = load_tokenizer(spec)
        return self._tokenizers[spec]

    def train_hops(self, cfg: TrainConfig) -> list[int]:
        return sorted({ex.hops for ex in self._training(cfg)[0]})

    def trained_answers(self, cfg: TrainConfig) -> set[str]:
        return {ex.answer for ex in self._training(cfg)[0]}

    def examples(self, cfg: TrainConfig, hops: int, n: int) -> list[Example]:
        key = (self._data_key(cfg), hops, n)
        if key not in self._sets:
            self._sets[key] = heldout_examples(cfg, self.tokenizer(cfg.base), [hops], n,
                                               exclude=self._training(cfg)[1])
        return self._sets[key]

    def digest(self, cfg: TrainConfig, hops: int, n: int) -> str:
        """A hash of the held-out set of `hops` (its prompts and per-loop targets)."""
        text = json.dumps([[ex.prompt, ex.targets] for ex in self.examples(cfg, hops, n)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]
