"""Several processes (torchrun, gloo on CPU, 2 ranks, one thread each) against one process with the same global batch:
training, a killed run's resume, `rlf eval` and the encoding cache; and, without a GPU, the choices the GPU path makes
(the device of each process, bf16 autocast) and the GPU presets.

Each 2-rank command is a real `torchrun` (through `rlf ... --nproc 2`, or torchrun itself), so each costs a few
seconds of process start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rlf.train
from rlf import distributed
from rlf.base import _check_loop_layers, _resolve_device, load_base
from rlf.cache import encode_cached
from rlf.cli import main
from rlf.config import load_config, preset_names
from rlf.errors import RLFError
from rlf.evaluate import evaluate
from rlf.model import copy_loss, loop_loss, loop_targets, trainable_parameters
from rlf.train import _save_weights_atomic, build_model, check_batch_split, load_run, make_data, phase_plan, train

from eval_helpers import randomized_model
from kill_helpers import SLOW_RLF, kill_between_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny preset (Mamba2 core): a read-out warm-up phase (the copy loss), then final-answer supervision, whose loss
# needs the global batch's count of supervised loops (the ranks' shares of it differ), so both normalisations show.
# lr is the default preset's: Adam turns a float-order difference in a gradient near its eps (1e-8) into up to
# lr x that relative difference in a weight (at the tiny preset's 3e-3, 2 of 24,704 weights differed by 2e-6).
PHASES = ("phases=[{name: readout, steps: 2, overrides: {supervision: copy}}, "
          "{name: main, overrides: {supervision: final}}]")
SMALL = ["n_train=72", "n_val=12", "batch_size=8", "max_steps=6", "warmup_steps=2", "lr=5e-4", "val_every=3",
         "ckpt_every=2", "log_every=1", "early_stop_patience=0", "device=cpu", PHASES]
FLOAT_METRICS = ("loss", "grad_norm")  # sums whose float order differs between 1 and 2 ranks
TIMING = ("examples_per_s", "train_seconds")
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def overrides(cache: Path) -> list[str]:
    return [*SMALL, f"cache_dir={cache}"]


def two_ranks(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "rlf", *args, "--nproc", "2"], env=ENV, cwd=cwd, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, reference: Path, tol: float = 1e-6) -> None:
    """Final weights within `tol`, counts and accuracies equal, float sums equal to 1e-6 relative."""
    a, b = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert float((a[k] - b[k]).abs().max()) <= tol, k
    got, want = metrics(run), metrics(reference)
    assert [sorted(r) for r in got] == [sorted(r) for r in want]  # the same records: no step logged twice
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in FLOAT_METRICS} == {k: v for k, v in w.items()
                                                                           if k not in FLOAT_METRICS}
        for k in set(FLOAT_METRICS) & set(g):
            assert g[k] == pytest.approx(w[k], rel=1e-6), (g["step"], k)


def assert_same_cache(cache: Path, reference: Path) -> None:
    """The same entries; each hidden.bin byte for byte, each index.json equal but for the time it took."""
    entries = sorted(p.name for p in reference.iterdir() if p.is_dir())
    assert entries and sorted(p.name for p in cache.iterdir() if p.is_dir()) == entries
    for e in entries:
        assert (cache / e / "hidden.bin").read_bytes() == (reference / e / "hidden.bin").read_bytes(), e
        got, want = (json.loads((d / e / "index.json").read_text()) for d in (cache, reference))
        assert got.pop("build_seconds") >= 0 and want.pop("build_seconds") >= 0 and got == want


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_llama) -> Path:
    """The yardstick: the same run in one process (one thread)."""
    run = tmp_path_factory.mktemp("one") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("tiny", overrides(run.parent / "cache")), run, progress=False, base=tiny_llama)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="module")
def two_process(tmp_path_factory, tiny_llama) -> dict:
    """The same run on 2 ranks, the hard way: its training set's encoding interrupted after one of its three batches
    beforehand, then started by torchrun itself, SIGKILLed (torchrun and both ranks) between two checkpoints, and
    resumed with `rlf train --resume RUN --nproc 2`. A copy of the killed run is kept in `again`."""
    root, side = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("two-side")
    cfg = load_config("tiny", overrides(root / "cache"))
    prompts = [ex.prompt for ex in make_data(cfg, tiny_llama.tokenizer)[0]]
    real, calls = type(tiny_llama).encode_ids, []

    def interrupted(self, ids, bf16=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, ids, bf16)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(type(tiny_llama), "encode_ids", interrupted)
        encode_cached(tiny_llama, prompts, cfg.cache_dir, cfg.template, cfg.storage, progress=False)

    run = root / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SLOW_RLF),
           "train", "--preset", "tiny", "--out", str(run), *overrides(root / "cache")]
    kill_between_checkpoints(cmd, run, ENV, side / "killed.txt")
    killed_at = json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    finished_before = (run / "model.safetensors").exists()
    shutil.copytree(run, side / "again")
    resumed = two_ranks("train", "--resume", str(run), cwd=root)
    return {"run": run, "killed_at": killed_at, "finished_before": finished_before, "resumed": resumed,
            "killed_log": (side / "killed.txt").read_text(), "again": side / "again"}


def test_a_killed_two_rank_run_resumes_and_ends_as_one_process_does(two_process, one_process):
    run, resumed = two_process["run"], two_process["resumed"]
    assert 0 < two_process["killed_at"] < 6 and not two_process["finished_before"]
    assert f"resumed {run} at step {two_process['killed_at']}" in resumed.stderr
    assert_same_run(run, one_process)  # steps before and after the kill, each logged once
    moved = load_file(run / "model.safetensors")["core.mixer.out_proj.weight"].abs().max()
    assert moved > 1e-3  # it starts at zero: the comparison is of trained weights
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert resumed.stdout.count('"steps": 6') == 1  # rank 0 alone prints the summary


def test_only_rank_0_writes_one_run_directory(two_process, one_process):
    run = two_process["run"]
    assert sorted(p.name for p in run.parent.iterdir()) == ["cache", "run"]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one_process.iterdir())


def test_two_ranks_resume_an_interrupted_encoding_into_the_same_bytes(two_process, one_process):
    log = two_process["killed_log"]
    assert log.count("resuming an interrupted encoding at batch 1/3") == 1  # rank 0 alone logs it
    assert_same_cache(two_process["run"].parent / "cache", one_process.parent / "cache")


def test_one_process_continues_a_two_rank_run(two_process, one_process, tiny_llama):
    """A different number of ranks on resume: the global batches do not depend on it, so the run ends the same."""
    again = two_process["again"]
    train(load_config("tiny", overrides(two_process["run"].parent / "cache")), again, resume=True, progress=False,
          base=tiny_llama)
    assert_same_run(again, one_process)


def test_eval_on_two_ranks_counts_what_one_process_counts(tmp_path, tiny_llama):
    """A random model, 18 chains in batches of 4: the ranks solve 3 and 2 of the 5 batches of each condition, noise
    and shuffle included (their draws depend on the batch); each side encodes the sets afresh."""
    model = randomized_model(tiny_llama)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        cfg = load_config("tiny", ["core=transformer", "max_loops=8", f"cache_dir={tmp_path / name / 'cache'}"])
        (tmp_path / name / "config.json").write_text(json.dumps(cfg.to_dict()))
        _save_weights_atomic(model, tmp_path / name / "model.safetensors")
    one, two = tmp_path / "one", tmp_path / "two"
    want = evaluate(one, hops="1,2,4", n=6, ablations="zero,noise,shuffle", batch_size=4,
                    run=load_run(one, base=tiny_llama), progress=False)
    two_ranks("eval", str(two), "--hops", "1,2,4", "--n", "6", "--ablate", "zero,noise,shuffle", "--batch-size", "4",
              "--device", "cpu", cwd=tmp_path)
    got = json.loads((two / "eval.json").read_text())
    assert got.pop("run") == str(two) and want.pop("run") == str(one)
    assert got == json.loads(json.dumps(want))  # every count, rate, interval and mean p(HALT)
    conditions = want["splits"]["in-distribution"]["conditions"]
    assert all(0 < conditions[c]["overall"]["loop_agreement"]["rate"] < 1 for c in ("zero", "noise", "shuffle"))
    for name in ("in-distribution", "ood"):
        assert (two / "eval_data" / f"{name}.jsonl").read_bytes() == (one / "eval_data" / f"{name}.jsonl").read_bytes()
    assert_same_cache(two / "cache", one / "cache")



@pytest.mark.parametrize("options", [
    [], ["core=transformer"], ["core=mamba1"], ["loop_span=answer"], ["core=transformer", "loop_span=answer"],
    ["lifeline=scalar", "loop_pos=learned", "scratchpad=2", "bridge_rank=4", "train_head=true", "core_dim=32"],
    ["encoder_layers=1", "loop_layers=1"],
], ids=lambda o: ",".join(o) or "tiny")
def test_every_trained_parameter_takes_part_in_every_kind_of_step(options, tiny_llama):
    """DDP runs without find_unused_parameters, which needs every trained parameter to get a gradient in every step:
    a loop step (per-loop supervision, or one loop for answer_once) and the copy warm-up, for every option."""
    base = load_base("tiny-llama", 1, loop_layers=1) if "loop_layers=1" in options else tiny_llama
    model = build_model(load_config("tiny", options), base)
    prompts = ["K = moon. P = K. What is P?\nAnswer:", "A = sun. What is A?\nAnswer:"]
    ids = base.tokenize(prompts)
    x, lengths = base.encode_ids(ids)
    flat, starts = torch.tensor(ids[0] + ids[1]), torch.tensor([0, len(ids[0])])
    steps = {"per_loop": lambda: loop_loss(model(x, lengths, 4), loop_targets([[5, 6], [7]], model.halt_id, 4))[0],
             "answer_once": lambda: loop_loss(model(x, lengths, 1), loop_targets([[5, 6], [7]], model.halt_id, 1,
                                                                                "answer_once"))[0],
             "copy": lambda: copy_loss(model, x, lengths, flat, starts, torch.rand(2, 3))[0]}
    for name, loss in steps.items():
        model.zero_grad(set_to_none=True)
        loss().backward()
        assert not [n for n, p in trainable_parameters(model).items() if p.grad is None], name

# ----------------------------------------------------------------------------------------------- refusals

def test_a_global_batch_that_does_not_split_is_refused_naming_a_fix():
    cfg = load_config("tiny", ["batch_size=30"])
    check_batch_split(cfg, phase_plan(cfg), 2)
    with pytest.raises(RLFError, match="batch_size=30: .* over the 4 processes.* multiple of 4, e.g. 28 or 32$"):
        check_batch_split(cfg, phase_plan(cfg), 4)
    phased = load_config("tiny", ["max_steps=10", "phases=[{name: warm, steps: 5, overrides: {batch_size: 3}}, "
                                  "{name: main}]"])
    with pytest.raises(RLFError, match=r"batch_size=3 \(phase 'warm'\): .* e.g. 4$"):
        check_batch_split(phased, phase_plan(phased), 4)


def test_the_command_line_refuses_what_torchrun_does_not_run(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["probe", str(tmp_path)]) == 2
    assert "rlf probe runs in one process; the commands that run under torchrun are train, eval, encode" in \
        capsys.readouterr().err
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--nproc", "3"]) == 2
    assert "--nproc 3: torchrun started 2 processes" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["eval", str(tmp_path), "--nproc", "0"]) == 2
    assert "--nproc 0: must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_rank_that_cannot_see_rank_0s_files_says_where_they_must_be(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "join", lambda: distributed.World(rank=1, size=2))
    with pytest.raises(RLFError, match="rank 1: .*train.jsonl .*not visible here.* filesystem every machine mounts"):
        distributed.must_see(tmp_path / "train.jsonl", "the run's training data")
    (tmp_path / "train.jsonl").write_text("")
    distributed.must_see(tmp_path / "train.jsonl", "the run's training data")


# ----------------------------------------------------------------------------------------------- the GPU path, on CPU

def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _resolve_device("auto") == _resolve_device("cuda") == torch.device("cuda", 1)
    assert _resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RLFError, match="each process takes the GPU of its LOCAL_RANK; use device=auto or cuda"):
        _resolve_device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RLFError, match="there are 2 GPUs .* more processes on this machine than it has GPUs"):
        _resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("bf16", [False, True])
def test_bf16_autocasts_the_loop_and_keeps_every_parameter_float32(tmp_path, tiny_llama, monkeypatch, caplog, bf16):
    """The training step under bf16=true (autocast on the run's device: here the CPU, on a GPU CUDA's)."""
    seen, real = [], rlf.train.loop_loss
    monkeypatch.setattr(rlf.train, "loop_loss", lambda logits, *a: seen.append(logits.dtype) or real(logits, *a))
    monkeypatch.setattr(rlf.train, "native_cpu_bf16", lambda: False)  # a CPU without it is warned
    cfg = load_config("tiny", [f"cache_dir={tmp_path / 'cache'}", "n_train=16", "n_val=4", "batch_size=4",
                               "max_steps=2", "val_every=2", "ckpt_every=2", "device=cpu", f"bf16={bf16}"])
    summary = train(cfg, tmp_path / "run", progress=False, base=tiny_llama)
    assert set(seen) == {torch.bfloat16 if bf16 else torch.float32} and len(seen) == 2
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32} and "lifeline_gate" in weights
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    # the prompts are encoded under the same autocast, into cache entries of their own
    assert {json.loads(p.read_text())["bf16"] for p in (tmp_path / "cache").rglob("index.json")} == {bf16}
    assert ("without native bfloat16" in caplog.text) == bf16


# the architecture of each GPU preset's base (its config.json on the hub): model type, layers
GPU_BASES = {"gpu-mamba2-130m": ("mamba2", 24), "gpu-gpt2": ("gpt2", 12), "gpu-mamba-1.4b": ("mamba", 48)}


def test_the_gpu_presets_fit_their_bases_and_say_how_to_launch_them():
    assert {n for n in preset_names() if n.startswith("gpu-")} == set(GPU_BASES)
    for name, (model_type, layers) in GPU_BASES.items():
        cfg = load_config(name)
        assert cfg.bf16 and cfg.device == "auto" and cfg.batch_size % 8 == 0, name  # 1, 2, 4 or 8 GPUs
        assert (cfg.encoder_layers or layers) + cfg.loop_layers <= layers, name
        if cfg.loop_layers:
            _check_loop_layers(cfg.base, model_type, cfg.loop_layers, cfg.encoder_layers, layers)
        text = (Path(rlf.train.__file__).parent / "configs" / f"{name}.yaml").read_text()
        assert f"--preset {name}" in text and "--nproc" in text and "estimate" in text, name

