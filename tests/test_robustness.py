"""Robustness of training (SPEC section 7): kill and resume, atomic checkpoints, resume refusals, safe loading,
the NaN guard, determinism, and fuzzing of the parsers a user's input goes through.

Runs are the tiny preset with a Transformer core, a few examples and a few steps, on one CPU thread
(faster on a shared machine, and the same reduction order in every process).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import rlf.train
from rlf.base import load_base
from rlf.cli import main
from rlf.config import TrainConfig, load_config
from rlf.errors import RLFError
from rlf.tasks import parse_hops, read_jsonl
from rlf.train import build_model, latest_checkpoint, load_checkpoint, load_run, make_optimizer, save_checkpoint, train

from kill_helpers import SLOW_RLF, kill_between_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(rlf.train.__file__).parent
SMALL = ["core=transformer", "n_train=24", "n_val=8", "batch_size=4", "max_steps=8", "warmup_steps=2",
         "val_every=4", "ckpt_every=2", "log_every=1", "early_stop_patience=0", "device=cpu"]
TIMING = ("examples_per_s", "train_seconds")  # the only fields of metrics.jsonl that may differ between runs


def small_overrides(cache_dir: str, *extra: str) -> list[str]:
    return [*SMALL, f"cache_dir={cache_dir}", *extra]


def small_config(cache_dir: str, *extra: str) -> TrainConfig:
    return load_config("tiny", small_overrides(cache_dir, *extra))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs: max |diff| {float((wa[k] - wb[k]).abs().max())}"


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir, tiny_llama) -> Path:
    """An uninterrupted small run, the yardstick for resumed and repeated runs."""
    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(small_config(cache_dir), run, progress=False, base=tiny_llama)
    finally:
        torch.set_num_threads(threads)
    return run


# ----------------------------------------------------------------------------------------------- kill and resume

def test_sigkill_then_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, cache_dir, reference_run, capsys):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SLOW_RLF), "train", "--preset", "tiny", "--out", str(run), *small_overrides(cache_dir)]
    proc = kill_between_checkpoints(cmd, run, env, tmp_path / "stderr.txt")
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    assert 0 < killed_at < 8 and not (run / "model.safetensors").exists()

    assert main(["train", "--resume", str(run)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert_same_weights(run / "model.safetensors", reference_run / "model.safetensors")
    assert_same_weights(run / "checkpoint" / "model.safetensors", reference_run / "checkpoint" / "model.safetensors")
    assert metrics(run) == metrics(reference_run)  # steps redone after the kill are logged once, with equal values
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["skipped_steps"] == 0
    assert summary["peak_rss_mb"] > 50  # the whole process: torch and the tiny base alone exceed this
    assert summary["encode_cost_seconds"] >= 0  # the resumed process hit the cache and still knows the cost


def test_ctrl_c_during_training_says_how_to_continue(tmp_path, cache_dir, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(rlf.train, "loop_loss", interrupted)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), *small_overrides(cache_dir)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; continue with `rlf train --resume {run}`" in err and "Traceback" not in err


def test_resume_before_the_first_checkpoint_starts_again(tmp_path, reference_run, tiny_llama):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    for leftover in ("checkpoint", "model.safetensors", "summary.json", "summary.md"):
        shutil.rmtree(run / leftover, ignore_errors=True) if leftover == "checkpoint" else (run / leftover).unlink()
    cfg = TrainConfig(**json.loads((run / "config.json").read_text()))
    train(cfg, run, resume=True, progress=False, base=tiny_llama)
    assert_same_weights(run / "model.safetensors", reference_run / "model.safetensors")
    assert metrics(run) == metrics(reference_run)


def test_resume_after_the_end_changes_nothing_and_can_extend(tmp_path, reference_run, tiny_llama, cache_dir):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    train(small_config(cache_dir), run, resume=True, progress=False, base=tiny_llama)
    assert_same_weights(run / "model.safetensors", reference_run / "model.safetensors")
    # how long, where and how often are not part of what is trained: changing them needs no --force
    later = small_config(cache_dir, "max_steps=10", "max_bad_steps=5", "ckpt_every=5", f"cache_dir={tmp_path / 'c'}")
    assert train(later, run, resume=True, progress=False, base=tiny_llama)["steps"] == 10
    assert json.loads((run / "config.json").read_text())["max_steps"] == 10


# ----------------------------------------------------------------------------------------------- atomic checkpoints

@pytest.fixture()
def model_and_opt(tiny_llama, cache_dir):
    cfg = small_config(cache_dir)
    model = build_model(cfg, tiny_llama)
    return model, make_optimizer(model, cfg)


def _perturb(model) -> None:
    with torch.no_grad():
        for p in rlf.train.trainable_parameters(model).values():
            p.add_(1.0)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rlf.train.trainable_parameters(model).items()}


@pytest.mark.parametrize("crash_at", ["optimizer file", "first rename", "second rename"])
def test_a_crash_inside_save_checkpoint_leaves_the_previous_one_loadable(tmp_path, model_and_opt, monkeypatch,
                                                                         crash_at):
    model, opt = model_and_opt
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    good = _snapshot(model)
    _perturb(model)

    calls = {"save_file": 0, "replace": 0}
    real_save, real_replace = rlf.train.save_file, os.replace

    def save_file(*args, **kwargs):
        calls["save_file"] += 1
        if crash_at == "optimizer file" and calls["save_file"] == 2:
            Path(args[1]).write_bytes(b"half a file")  # what a crash in the middle of writing leaves
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    def replace(src, dst):
        calls["replace"] += 1
        if (crash_at, calls["replace"]) in (("first rename", 1), ("second rename", 2)):
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(rlf.train, "save_file", save_file)
    monkeypatch.setattr(rlf.train.os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, model, opt, {"step": 2})
    monkeypatch.undo()

    expected_dir = "checkpoint.old" if crash_at == "second rename" else "checkpoint"
    assert latest_checkpoint(tmp_path) == tmp_path / expected_dir
    _perturb(model)
    assert load_checkpoint(tmp_path, model, opt)["step"] == 1
    for k, v in _snapshot(model).items():
        assert torch.equal(v, good[k])
    # and the next save after the crash goes through and cleans up
    save_checkpoint(tmp_path, model, opt, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert load_checkpoint(tmp_path, model, opt)["step"] == 3


# ----------------------------------------------------------------------------------------------- resume refusals

@pytest.fixture()
def run_copy(tmp_path, reference_run) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    return run


def test_resume_with_a_changed_config_is_refused_naming_it_then_forced(run_copy, capsys):
    assert main(["train", "--resume", str(run_copy), "lr=0.01", "max_steps=9"]) == 2
    err = capsys.readouterr().err
    assert "lr: 0.003 -> 0.01" in err and "--force" in err and "max_steps" not in err and "Traceback" not in err
    assert json.loads((run_copy / "config.json").read_text())["lr"] == 0.003  # untouched

    assert main(["train", "--resume", str(run_copy), "lr=0.01", "max_steps=9", "--force"]) == 0
    assert json.loads((run_copy / "config.json").read_text())["lr"] == 0.01  # the config now says what was trained
    assert json.loads((run_copy / "summary.json").read_text())["steps"] == 9
    assert main(["train", "--resume", str(run_copy)]) == 0  # and a plain resume accepts it from now on


def test_resume_with_an_incompatible_forced_config_is_an_error_and_keeps_the_run(run_copy, capsys):
    config_before = (run_copy / "config.json").read_text()
    assert main(["train", "--resume", str(run_copy), "scratchpad=2", "--force"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "scratchpad" in err and "Traceback" not in err
    assert (run_copy / "config.json").read_text() == config_before


def test_resume_with_changed_data_is_refused_naming_the_file_then_forced(run_copy, capsys):
    lines = (run_copy / "train.jsonl").read_text().splitlines(keepends=True)
    (run_copy / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))  # same examples, another order
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl" in err and "val.jsonl" not in err and "--force" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run_copy), "--force"]) == 0
    assert main(["train", "--resume", str(run_copy)]) == 0  # data.json now records the data trained on


@pytest.mark.parametrize("damage", ["config.json", "state.json", "optimizer.safetensors", "model.safetensors"])
def test_resume_from_a_damaged_run_is_a_clear_error(run_copy, capsys, damage):
    target = run_copy / damage if damage == "config.json" else run_copy / "checkpoint" / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert damage in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- safe loading

class WritesAMarker:
    """Unpickling this creates a file: the proof that a loader executed code from the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bomb(path: Path, marker: Path) -> None:
    torch.save({"lifeline_gate": WritesAMarker(marker)}, path)


def test_no_pickle_based_loading_in_the_source():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"pickle\.loads?\(|Unpickler|dill\.|joblib\.load|import shelve", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "allow_pickle=True" not in text, path


@pytest.mark.parametrize("where", ["model.safetensors", "checkpoint/model.safetensors",
                                   "checkpoint/optimizer.safetensors"])
def test_a_pickle_in_place_of_weights_is_refused_and_never_run(run_copy, tmp_path, capsys, where):
    marker = tmp_path / "marker"
    if where == "checkpoint/model.safetensors":
        (run_copy / "model.safetensors").unlink()  # so that solve falls back to the checkpoint
    _pickle_bomb(run_copy / where, marker)

    if where != "checkpoint/optimizer.safetensors":
        with pytest.raises(RLFError, match="not a valid safetensors file"):
            load_run(run_copy)
        assert main(["solve", str(run_copy), "K = moon. P = K. What is P?"]) == 2
    if where.startswith("checkpoint/"):
        assert main(["train", "--resume", str(run_copy), "max_steps=9"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not marker.exists()

    hostile = shutil.copy(run_copy / where, tmp_path / "hostile.pt")  # (torch.load reads *.safetensors safely)
    torch.load(hostile, weights_only=False)  # the file really is hostile: unpickling it runs code
    assert marker.exists()


def test_a_base_directory_with_pickled_weights_is_refused_and_never_run(tmp_path, tiny_llama, capsys):
    base_dir, marker = tmp_path / "base", tmp_path / "marker"
    tiny_llama.tokenizer.save_pretrained(base_dir)
    tiny_llama.model.config.save_pretrained(base_dir)
    _pickle_bomb(base_dir / "pytorch_model.bin", marker)
    with pytest.raises(RLFError, match="pickled code"):
        load_base(str(base_dir))
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "K = moon. What is K?"}\n')
    assert main(["encode", str(tmp_path / "prompts.jsonl"), "--base", str(base_dir),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "pickled code" in capsys.readouterr().err
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- numerical faults

def _nan_loss_on(calls: set[int] | None, monkeypatch, grad: bool = False) -> None:
    """Make the training loss (or only its gradient) non-finite on the given calls (None: every call from 0)."""
    real = rlf.train.loop_loss
    count = {"n": 0}

    def loop_loss(logits, targets, *args, **kwargs):
        n, count["n"] = count["n"], count["n"] + 1
        loss, stats = real(logits, targets, *args, **kwargs)
        if logits.requires_grad and (calls is None or n in calls):
            if grad:  # the loss stays finite, its gradient does not
                logits.register_hook(lambda g: g * float("inf"))
            else:
                loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(rlf.train, "loop_loss", loop_loss)


@pytest.mark.parametrize("grad", [False, True], ids=["nan-loss", "inf-grad"])
def test_a_non_finite_step_is_skipped_and_counted(tmp_path, cache_dir, tiny_llama, monkeypatch, grad):
    _nan_loss_on({2, 3}, monkeypatch, grad=grad)
    summary = train(small_config(cache_dir), tmp_path / "run", progress=False, base=tiny_llama)
    assert summary["skipped_steps"] == 2 and summary["steps"] == 8
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_steps"] for r in rows if "skipped_steps" in r}
    assert skipped[2] == 0 and skipped[3] == 1 and skipped[4] == 2 and skipped[8] == 2
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "run" / "model.safetensors").values())


def test_persistent_nan_stops_the_run_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, cache_dir, monkeypatch,
                                                                                capsys):
    _nan_loss_on(set(range(3, 100)), monkeypatch)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), *small_overrides(cache_dir, "max_bad_steps=3")]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "3 consecutive" in err and str(run) in err and "Traceback" not in err
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5 and state["skipped_steps"] == 3 and state["stopped"].startswith("non-finite")
    saved = weights(run / "checkpoint" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in saved.values())
    assert not (run / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------- determinism

def test_same_seed_same_data_same_machine_gives_identical_runs(tmp_path, cache_dir, tiny_llama, reference_run):
    run = tmp_path / "again"
    train(small_config(cache_dir), run, progress=False, base=tiny_llama)
    for name in ("train.jsonl", "val.jsonl", "data.json", "config.json", "model.json"):
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), name
    assert metrics(run) == metrics(reference_run)
    assert_same_weights(run / "model.safetensors", reference_run / "model.safetensors")

    other = tmp_path / "other-seed"
    train(small_config(cache_dir, "seed=1"), other, progress=False, base=tiny_llama)
    assert (other / "train.jsonl").read_bytes() == (reference_run / "train.jsonl").read_bytes()  # data_seed: same
    a, b = weights(other / "model.safetensors"), weights(reference_run / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the comparison above can fail


# ----------------------------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(
        st.text(max_size=40),
        st.dictionaries(st.sampled_from(["id", "prompt", "targets", "task", "hops", "answer", "meta", "x"]),
                        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                                  st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=4)),
                        max_size=6).map(json.dumps),
    ), max_size=5).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
))
@example(data=b"\xff\xfe")
@example(data=b'{"prompt": "a", "targets": []}')
@example(data=b"[1, 2]\n")
def test_fuzz_read_jsonl_raises_only_rlferror(tmp_path, data):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    try:
        examples = read_jsonl(path)
    except RLFError as e:
        assert str(e)
    else:
        assert all(ex.prompt and ex.targets for ex in examples)


@FUZZ
@given(text=st.one_of(st.text(max_size=20), st.from_regex(r"[0-9 ,\-]{0,12}", fullmatch=True),
                     st.text(st.characters(categories=("Nd", "Pd")) | st.sampled_from(" ,-"), max_size=12)))
@example(text="5-1")
@example(text="1-5,8")
@example(text="-3")
@example(text="1--2")
def test_fuzz_parse_hops_returns_sorted_positive_ints_or_raises_rlferror(text):
    try:
        hops = parse_hops(text)
    except RLFError as e:
        assert "hops" in str(e)
    else:
        assert hops == sorted(set(hops)) and hops and all(isinstance(h, int) and h >= 1 for h in hops)


# '²'.isdigit() is True but int('²') fails: the parser must refuse such digits itself
@pytest.mark.parametrize("text", ["²", "1-²", "³,4"])
def test_parse_hops_refuses_superscript_digits_with_rlferror(text):
    with pytest.raises(RLFError, match="hops"):
        parse_hops(text)


KEYS = sorted(TrainConfig.__dataclass_fields__)


@FUZZ
@given(item=st.one_of(
    st.text(max_size=30),
    st.tuples(st.sampled_from(KEYS), st.one_of(
        st.text(max_size=12),
        st.sampled_from(["0", "-1", "1e-3", "nan", "inf", "-inf", "true", "null", "None", "1-3", "5-1", "", " "]),
    )).map(lambda kv: f"{kv[0]}={kv[1]}"),
))
@example(item="n_train=0")
@example(item="lr=nan")
@example(item="hops=5-1")
@example(item="=")
def test_fuzz_config_overrides_give_a_config_or_rlferror(item):
    try:
        cfg = load_config("tiny", [item])
    except RLFError as e:
        assert str(e)
    else:
        assert isinstance(cfg, TrainConfig)
        TrainConfig(**cfg.to_dict())  # what it would save in config.json loads back
