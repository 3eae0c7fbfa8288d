"""The `rlf` command on bad input: every user mistake is a short error naming what is wrong and where, exit
status 2, and no traceback. Most cases fail before any model is loaded; the rest use the tiny base."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from rlf.cli import main
from rlf.config import load_config
from rlf.train import load_run, train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["core=transformer", "n_train=8", "n_val=4", "batch_size=4", "max_steps=2", "warmup_steps=1",
         "early_stop_patience=0", "device=cpu"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir, tiny_llama) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("tiny", [*SMALL, f"cache_dir={cache_dir}"]), run, progress=False, base=tiny_llama)
    finally:
        torch.set_num_threads(threads)
    return run


def fails(capsys, argv: list[str], *expected: str) -> str:
    """Run `rlf argv`; it must exit 2 with one error (no traceback) that contains every `expected` text."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert f"rlf {argv[0]}: error: " in err, err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    return err


# ----------------------------------------------------------------------------------------------- config values

@pytest.mark.parametrize("override, expected", [
    ("hops=5-1", ["hops", "5-1", "goes down"]),
    ("hops=abc", ["hops", "'abc' is not a number or a range"]),
    ("hops=", ["hops"]),
    ("hops=0-3", ["hops", "outside"]),
    ("n_train=0", ["n_train=0", "must be positive"]),
    ("n_train=-5", ["n_train=-5", "must be positive"]),
    ("n_val=abc", ["n_val", "expected int"]),
    ("batch_size=0", ["batch_size=0"]),
    ("max_steps=-1", ["max_steps=-1"]),
    ("n_train=2.5", ["n_train", "expected int"]),
    ("distractors=-1", ["distractors=-1", "0 or more"]),
    ("distractors=6-2", ["distractors", "6-2", "goes down"]),
    ("distractors=two", ["distractors", "'two' is not a number or a range"]),
    ("lr=nan", ["lr=nan", "finite"]),
    ("lr=-0.1", ["lr=-0.1", "positive"]),
    ("lr=fast", ["lr", "expected float"]),
    ("early_stop_acc=1.5", ["early_stop_acc", "between 0 and 1"]),
    ("core=lstm", ["core='lstm'", "mamba2", "transformer"]),
    ("train_head=maybe", ["train_head", "expected bool"]),
    ("learning_rate=0.1", ["unknown key 'learning_rate'", "lr"]),
    ("lr", ["'lr'", "key=value"]),
])
def test_bad_config_values_fail_before_anything_is_written(tmp_path, capsys, override, expected):
    out = tmp_path / "run"
    fails(capsys, ["train", "--preset", "tiny", "--out", str(out), override], f"override {override!r}", *expected)
    assert not out.exists()


@pytest.mark.parametrize("override", ["hops=1-5,8", "hops= 2 , 4-6", "encoder_layers=null", "lr=1e-3", "n_train=1_000",
                                      "distractors=2-6", "distractors=3"])
def test_good_config_values_are_accepted(override):
    load_config("tiny", [override])


def test_a_distractor_range_is_text_and_a_count_an_integer():
    assert load_config("tiny", ["distractors=2-6"]).distractors == "2-6"
    assert load_config("tiny", ["distractors=3"]).distractors == 3


def test_hops_are_checked_at_load_even_when_data_comes_from_files(capsys, tmp_path):
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "train_file=a.jsonl",
                   "val_file=b.jsonl", "hops=3-1"], "hops")


def test_unknown_preset_lists_the_presets(capsys, tmp_path):
    fails(capsys, ["train", "--preset", "huge", "--out", str(tmp_path / "r")], "--preset huge", "unknown preset",
          "tiny", "default")


def test_train_needs_out_and_refuses_options_that_do_not_combine(capsys, tmp_path):
    fails(capsys, ["train", "--preset", "tiny"], "--out RUN is required")
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--force"], "--force", "--resume")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.001\n")
    fails(capsys, ["train", "--preset", "tiny", "--config", str(cfg), "--out", str(tmp_path / "r")],
          "--preset or --config")


# ----------------------------------------------------------------------------------------------- config files

@pytest.mark.parametrize("content, expected", [
    ("lr: 0.001\nlearning_rate: 0.1\n", ["unknown key 'learning_rate'", "valid keys"]),
    ("n_train: many\n", ["n_train='many'", "expected int"]),
    ("n_train: 0\n", ["n_train=0", "must be positive"]),
    ("hops: 4-2\n", ["hops", "goes down"]),
    ("core: [mamba2]\n", ["core=['mamba2']", "use one of"]),
    ("lr: 1e-3\nn_train: [1\n", ["not valid YAML"]),
    ("- lr\n- 0.1\n", ["expected a mapping", "list"]),
    ("!!python/object/apply:os.system ['true']\n", ["not valid YAML"]),
    (b"\x80\x81\xfe\xff", ["not a text file"]),
])
def test_bad_config_files_name_the_file_and_the_key(tmp_path, capsys, content, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "r")], str(path), *expected)
    assert not (tmp_path / "r").exists()


def test_a_config_file_reads_1e_minus_3_as_a_number(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as text; as an override it is a float
    assert load_config(None, [], str(path)).lr == 0.001


def test_an_integer_for_a_float_key_is_the_same_config(tmp_path):
    """`lora_alpha: 16` and `lora_alpha: 16.0` must not look like different configs to --resume."""
    path = tmp_path / "config.yaml"
    path.write_text("lora_alpha: 16\nlr: 1\n")
    cfg = load_config(None, [], str(path))
    assert type(cfg.lora_alpha) is float and type(cfg.lr) is float
    assert cfg.digest() == load_config(None, ["lora_alpha=16.0", "lr=1.0"]).digest()


def test_digest_leaves_out_defaults_and_sees_every_change(monkeypatch):
    import dataclasses

    import rlf.config
    from rlf.config import TrainConfig

    cfg = load_config("default", [])
    assert cfg.digest() != load_config("default", ["lr=1e-3"]).digest()
    assert cfg.digest() == load_config("default", ["max_steps=5"]).digest()  # how long, not what

    @dataclasses.dataclass
    class Newer(TrainConfig):  # a later version with one more key
        new_key: int = 0

    monkeypatch.setitem(rlf.config._HINTS, "new_key", int)
    assert Newer(**cfg.to_dict()).digest() == cfg.digest()  # at its default: cached measurements stay valid
    assert Newer(**cfg.to_dict(), new_key=1).digest() != cfg.digest()


def test_missing_config_file(capsys, tmp_path):
    fails(capsys, ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")],
          "nope.yaml", "no such file")


# ----------------------------------------------------------------------------------------------- bases

@pytest.mark.parametrize("spec, expected", [
    ("/nonexistent/dir", "no such model directory"),
    ("./no/such/dir", "no such model directory"),
    ("not-a-model", "not a known base"),
    ("no-org/not-a-model", "not a known base"),
    ("missing.gguf", "no such GGUF file"),
])
def test_unknown_bases_fail_fast_and_clearly_offline(tmp_path, capsys, monkeypatch, cache_dir, spec, expected):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on a machine without network
    start = time.monotonic()
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"base={spec}", f"cache_dir={cache_dir}"],
          f"--base {spec}", expected)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("device, expected", [("banana", "not a device"), ("cuda:99", "cuda:99")])
def test_a_device_that_is_not_there(tmp_path, capsys, cache_dir, device, expected):
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"device={device}",
                   f"cache_dir={cache_dir}"], f"--device {device}", expected)


def test_a_directory_that_is_no_model(tmp_path, capsys, cache_dir):
    base = tmp_path / "base"
    base.mkdir()
    argv = ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"base={base}", f"cache_dir={cache_dir}"]
    fails(capsys, argv, f"--base {base}", "not a model directory", "config.json")
    (base / "config.json").write_text('{"model_type": "llama"}')
    fails(capsys, argv, f"--base {base}", "not a known base", "The loader said")


# ----------------------------------------------------------------------------------------------- data files

def test_missing_data_file(tmp_path, capsys, cache_dir):
    missing = tmp_path / "missing.jsonl"
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"train_file={missing}",
                   f"cache_dir={cache_dir}", *SMALL], str(missing), "no such file")


def test_invalid_data_file_names_file_line_and_field(tmp_path, capsys, cache_dir):
    good = {"id": "a", "task": "chain", "prompt": "K = moon. What is K?", "targets": ["moon"], "answer": "moon",
            "hops": 1}
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "prompt": 5}) + "\n{not json\n")
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"train_file={data}",
                   f"cache_dir={cache_dir}", *SMALL], f"{data}:2", "prompt", f"{data}:3")


def test_targets_that_are_not_one_token_name_the_example(tmp_path, capsys, cache_dir):
    row = {"id": "a", "task": "chain", "prompt": "K = moon. What is K?", "targets": ["moonlightingly"],
           "answer": "moonlightingly", "hops": 1}
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(row) + "\n")
    fails(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"train_file={data}",
                   f"cache_dir={cache_dir}", *SMALL], f"{data}: example 1 (id a), targets[0]", "3 tokens")
    assert not (tmp_path / "r" / "config.json").exists()  # nothing trained: the same --out can be used again


def test_encode_with_a_bad_prompt_file(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    fails(capsys, ["encode", str(path)], f"{path}:2", "prompt")
    fails(capsys, ["encode", str(tmp_path / "none.jsonl")], "none.jsonl", "cannot open")


# ----------------------------------------------------------------------------------------------- run directories

def test_resume_on_something_that_is_not_a_run(tmp_path, capsys):
    fails(capsys, ["train", "--resume", str(tmp_path)], f"--resume {tmp_path}", "not a run directory")
    fails(capsys, ["train", "--resume", str(tmp_path / "nope")], "not a run directory")


def test_resume_refuses_a_preset_config_or_out(trained_run, capsys, tmp_path):
    fails(capsys, ["train", "--resume", str(trained_run), "--preset", "tiny"], "--preset")
    fails(capsys, ["train", "--resume", str(trained_run), "--out", str(tmp_path)], "--out")


def test_resume_with_a_bad_override(trained_run, capsys):
    fails(capsys, ["train", "--resume", str(trained_run), "hops=9-1"], "hops")


def test_out_on_an_existing_run_is_refused(trained_run, capsys):
    before = (trained_run / "config.json").read_text()
    fails(capsys, ["train", "--preset", "tiny", "--out", str(trained_run)], "already holds a run", "--resume")
    assert (trained_run / "config.json").read_text() == before


def test_out_on_a_file_is_refused(tmp_path, capsys, cache_dir):
    path = tmp_path / "file"
    path.write_text("mine")
    fails(capsys, ["train", "--preset", "tiny", "--out", str(path), f"cache_dir={cache_dir}"], "not a directory")
    assert path.read_text() == "mine"


# ----------------------------------------------------------------------------------------------- solve

def test_solve_works_on_the_trained_run(trained_run, capsys):
    assert main(["solve", str(trained_run), "K = moon. P = K. What is P?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0][0]["loop"] == 1


def test_solve_holds_the_loop_clock(trained_run, capsys):
    prompt = "K = moon. P = K. Z = P. What is Z?"
    traces = {}
    for clamp in (None, 0):
        assert main(["solve", str(trained_run), prompt, "--json", "--max-loops", "6",
                     *([] if clamp is None else ["--loop-clamp", str(clamp)])]) == 0
        traces[clamp] = json.loads(capsys.readouterr().out)[0]
    assert traces[0] == load_run(trained_run).solve([prompt], 6, loop_clamp=0)[0]
    assert [t["p"] for t in traces[0]][1:] != [t["p"] for t in traces[None]][1:]  # loop 1 is at position 0 either way
    assert traces[0][0] == traces[None][0]
    fails(capsys, ["solve", str(trained_run), prompt, "--loop-clamp", "-1"], "--loop-clamp")


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_solve_refuses_an_empty_prompt(trained_run, capsys, prompt):
    fails(capsys, ["solve", str(trained_run), prompt], "empty prompt")


def test_solve_refuses_a_prompt_longer_than_the_base_allows(trained_run, capsys):
    fails(capsys, ["solve", str(trained_run), "K = moon. " * 400 + "What is K?"], "longer than the base's limit",
          "512")


@pytest.mark.parametrize("loops", ["0", "-3"])
def test_solve_refuses_a_loop_count_below_one(trained_run, capsys, loops):
    fails(capsys, ["solve", str(trained_run), "K = moon. What is K?", "--max-loops", loops], "--max-loops")


def test_solve_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    fails(capsys, ["solve", str(tmp_path), "K = moon. What is K?"], str(tmp_path), "not a run directory")


def test_solve_on_a_run_without_weights(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((trained_run / "config.json").read_text())
    fails(capsys, ["solve", str(run), "K = moon. What is K?"], "no model.safetensors and no checkpoint")


def test_solve_on_a_damaged_config(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**json.loads((trained_run / "config.json").read_text()),
                                                 "colour": "blue"}))
    fails(capsys, ["solve", str(run), "K = moon. What is K?"], "config.json", "colour")
