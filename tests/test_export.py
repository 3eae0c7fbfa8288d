"""`rlf export` + runtime/rlf.c against `rlf solve`: the C runtime built with the system compiler must give the
same token ids, the same loop-by-loop top-1 tokens, the same halting loop and the same probabilities (1e-3, f32)
as the Python model, on tiny random runs of each core and option and on a short-trained run on the embedded base.
A damaged file must be a clear error, never a crash."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlf.base import load_base
from rlf.cache import apply_template
from rlf.cli import main
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.export import build_runtime, export_run, find_compiler
from rlf.model import trainable_parameters
from rlf.train import load_run, train

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc or clang) to build runtime/rlf.c"),
]

SMALL = ["n_train=8", "n_val=4", "batch_size=4", "max_steps=2", "warmup_steps=1", "early_stop_patience=0",
         "device=cpu"]
PROMPTS = ["K = moon. P = K. What is P?", "A = sun. B = A. C = B. D = C. What is D?",
           "café = 3.14;  naïve\ttest 12345", "Über — “quotes”, emoji 🙂 and 漢字?", "x", "  spaces around  "]
TOL = 1e-3
VARIANTS = {  # name -> overrides of the tiny preset: each core, then every loop option the runtime implements
    "mamba2": ["core=mamba2"],
    "transformer": ["core=transformer"],
    "transformer-options": ["core=transformer", "scratchpad=2", "bridge_rank=4", "loop_pos=learned", "max_loops=4",
                            "lifeline=scalar", "train_head=true"],
    "mamba2-options": ["core=mamba2", "scratchpad=3", "loop_pos=none", "lifeline=none"],
    "mamba2-narrow": ["core=mamba2", "core_dim=32"],  # the core looped at width 32 < d = 64
    "transformer-looped": ["core=transformer", "encoder_layers=1", "loop_layers=1", "scratchpad=2"],
    "transformer-narrow": ["core=transformer", "core_dim=32"],
}
@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Path:
    return build_runtime(tmp_path_factory.mktemp("bin") / "rlf-run")


def run_c(runtime: Path, gguf: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(runtime), str(gguf), *args], capture_output=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


def c_traces(runtime, gguf, prompts, *flags) -> list[dict]:
    out = run_c(runtime, gguf, "--json", *flags, *prompts).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def reference(loaded, prompt: str, max_loops: int, **kw) -> dict:
    """The Python model's trace at batch 1: token ids, p, p_halt up to and including the first <HALT>."""
    x, lengths = loaded.encode([prompt])
    out = loaded.model.solve(x, lengths, max_loops, **kw)
    halted = int(out["halted_at"][0])
    n = halted + 1 if halted >= 0 else out["tokens"].shape[1]
    text = [t["token"] for t in loaded.solve([prompt], max_loops, **kw)[0]]
    return {"input_ids": loaded.base.tokenize([apply_template(loaded.config.template, prompt)])[0],
            "ids": out["tokens"][0, :n].tolist(), "p": out["p"][0, :n].tolist(),
            "p_halt": out["p_halt"][0, :n].tolist(), "halted_at": halted, "text": text}


def assert_same(c: dict, ref: dict, prompt: str) -> None:
    assert c["input_ids"] == ref["input_ids"], prompt
    assert [t["id"] for t in c["trace"]] == ref["ids"], prompt  # same loop count, top-1 tokens and halting loop
    assert c["halted_at"] == ref["halted_at"], prompt
    assert [t["token"] for t in c["trace"]] == ref["text"], prompt  # printed as `rlf solve` prints it
    for t, p, ph in zip(c["trace"], ref["p"], ref["p_halt"]):
        assert abs(t["p"] - p) < TOL and abs(t["p_halt"] - ph) < TOL, (prompt, t, p, ph)


def make_halt_at_loop3(loaded, run: Path, max_loops: int) -> None:
    """Random weights rarely halt: make <HALT> the top-1 at loop 3 of the first prompt (its row = 1.05 x the row
    of the token that loop emits), so the halting loop is compared too. Changes the head only, not the states."""
    token = reference(loaded, PROMPTS[0], max_loops)["ids"][2]
    for scale in (1.05, 0.95):  # above the token's logit whichever its sign
        with torch.no_grad():
            loaded.model.halt_row.copy_(scale * loaded.model.lm_head[token])
        if reference(loaded, PROMPTS[0], max_loops)["halted_at"] >= 0:
            break
    save_file({k: v.detach().contiguous() for k, v in trainable_parameters(loaded.model).items()},
              run / "model.safetensors")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llama, cache_dir) -> dict:
    """name -> (LoadedRun, exported f32 GGUF) for every variant: trained 2 steps, then every weight perturbed so
    the core, gate, LoRA and options matter (a 2-step core is almost the identity, LoRA B starts at zero)."""
    out = {}
    for seed, (name, overrides) in enumerate(VARIANTS.items()):
        run = tmp_path_factory.mktemp(name) / "run"
        torch.set_num_threads(1)
        base = tiny_llama
        if "loop_layers=1" in overrides:  # the seeds' recipe: block 0 encoded once, block 1 (with LoRA) in the loop
            base = load_base("tiny-llama", encoder_layers=1, loop_layers=1)
        train(load_config("tiny", [*SMALL, *overrides, f"cache_dir={cache_dir}"]), run, progress=False, base=base)
        loaded = load_run(run, device="cpu", base=base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in trainable_parameters(loaded.model).values():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        make_halt_at_loop3(loaded, run, 8)
        gguf = run.parent / f"{name}.gguf"
        export_run(run, gguf, "f32", loaded=loaded)
        out[name] = (loaded, gguf)
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_runtime_matches_solve(runtime, exported, name):
    loaded, gguf = exported[name]
    traces = c_traces(runtime, gguf, PROMPTS, "--max-loops", "8")
    assert len(traces) == len(PROMPTS)
    for prompt, c in zip(PROMPTS, traces):
        assert_same(c, reference(loaded, prompt, 8), prompt)
    assert traces[0]["halted_at"] >= 0  # the halting loop was compared, not only the loop limit


@pytest.mark.parametrize("name", ["mamba2", "transformer"])
def test_long_prompt_matches_solve(runtime, exported, name):
    """Past 256 tokens the Python Mamba2 core switches to transformers' chunked scan: the recurrence still agrees."""
    loaded, gguf = exported[name]
    prompt = " ".join(f"V{i} = V{i - 1}." for i in range(1, 45)) + " What is V44?"
    assert 300 < len(loaded.base.tokenize([prompt])[0]) < 512
    assert_same(c_traces(runtime, gguf, [prompt], "--max-loops", "4")[0], reference(loaded, prompt, 4), prompt)
    too_long = prompt * 2  # past the base's 512 positions: both refuse, naming the limit
    with pytest.raises(RLFError, match="longer than the base's limit of 512"):
        loaded.solve([too_long])
    done = run_c(runtime, gguf, too_long, check=False)
    assert done.returncode == 2 and b"longer than the base's limit of 512" in done.stderr


@pytest.mark.parametrize("flags,kw", [(["--loop-clamp", "2"], {"loop_clamp": 2}),
                                      (["--gate-scale", "0"], {"gate_scale": 0.0}),
                                      (["--max-loops", "2"], {})])
def test_runtime_options_match_solve(runtime, exported, flags, kw):
    loaded, gguf = exported["mamba2"]
    max_loops = int(flags[1]) if flags[0] == "--max-loops" else 8
    extra = [] if flags[0] == "--max-loops" else ["--max-loops", "8"]
    for prompt, c in zip(PROMPTS[:3], c_traces(runtime, gguf, PROMPTS[:3], *flags, *extra)):
        assert_same(c, reference(loaded, prompt, max_loops, **kw), prompt)


def test_table_output_is_the_solve_table(runtime, exported, capsys):
    """Without --json the runtime prints exactly what `rlf solve` prints."""
    loaded, gguf = exported["transformer"]
    run = gguf.parent / "run"
    assert main(["solve", str(run), *PROMPTS[:2], "--max-loops", "5"]) == 0
    assert run_c(runtime, gguf, *PROMPTS[:2], "--max-loops", "5").stdout.decode() == capsys.readouterr().out


def varied_strings(n: int, seed: int = 0) -> list[str]:
    """Strings that exercise every branch of the pre-tokeniser regex and the byte-level BPE."""
    rng = random.Random(seed)
    pieces = ["Hello", " world", "don't", "I'M", "we'll", "'re", "'ve", "'s", "'d", "'x", "12345", "3.14", "٣٤",
              "Ⅻ", "½", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "\u00a0", "\u3000", "\u2028", "\x85",
              "\x1c", "\x04", "\x7f", "!", "?!", "...", "—", "“”", "(", ")", "[x]", "{}", "#", "$", "%", "&&",
              "café", "naïve", "e\u0301", "Über", "straße", "Ελληνικά", "русский", "日本語", "漢字", "한국어",
              "עברית", "العربية", "हिन्दी", "🙂", "👍🏽", "🇫🇷", "\U0001F600x", "𝔘𝔫𝔦", "<|im_start|>", "<|im_end|>",
              "<|endoftext|>", "<im_start>", "K = moon.", " What is P?", "\nAnswer:", "x1", "a_b", "CamelCase"]
    out = ["", " ", "a", "  a", "a  ", " \n", "\n ", "'", "''s", "1 2  3   4"]
    while len(out) < n:
        k = rng.randint(1, 8)
        out.append("".join(rng.choice(pieces) if rng.random() < 0.8 else chr(rng.choice(
            [rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2ff), rng.randint(0x370, 0x52f), rng.randint(0x4e00, 0x9fff),
             rng.randint(0x1f300, 0x1f64f)])) for _ in range(k)))
    return out


def test_tokenizer_matches_the_base_tokenizer(runtime, exported, tmp_path):
    """Identical ids from the C tokenizer and the base's tokenizer (SmolLM2's byte-level BPE) on 400 strings."""
    loaded, gguf = exported["mamba2"]
    strings = varied_strings(400)
    path = tmp_path / "strings.bin"
    path.write_bytes(b"".join(s.encode() + b"\0" for s in strings))
    lines = run_c(runtime, gguf, "--tokenize-file", str(path)).stdout.decode().split("\n")
    assert len(lines) == len(strings) + 1 and lines[-1] == ""
    for s, line, ids in zip(strings, lines, loaded.base.tokenize(strings)):
        assert [int(i) for i in line.split()] == ids, repr(s)


def test_token_text_matches_decode(runtime, exported):
    """Every token of the vocabulary prints as `tokenizer.decode([id]).strip()` does (the trace's token column)."""
    loaded, gguf = exported["mamba2"]
    got = [json.loads(line) for line in run_c(runtime, gguf, "--decode-all").stdout.decode().splitlines()]
    tok = loaded.base.tokenizer
    assert got == [tok.decode([i]).strip() for i in range(len(got))]
    assert len(got) == loaded.model.cfg.vocab_size


def test_memory_does_not_grow_with_loops(runtime, exported):
    loaded, gguf = exported["mamba2"]

    def peak_kb(loops: int) -> tuple[int, int]:
        done = run_c(runtime, gguf, "--json", "--timing", "--max-loops", str(loops), PROMPTS[1])
        timing = dict(kv.split("=") for kv in done.stderr.decode().split(":", 1)[1].split())
        return int(timing["peak_rss_kb"]), len(json.loads(done.stdout)["trace"])

    (short, n_short), (long, n_long) = peak_kb(2), peak_kb(256)
    assert (n_short, n_long) == (2, 256)  # it really ran 256 loops (no <HALT> on this prompt)
    assert long - short < 512, (short, long)  # KB: flat, not a cache per loop


def test_smaller_dtypes(runtime, exported, tmp_path):
    """f16 and q8_0 files are smaller (matrices at 2 and 34/32 bytes a value; ~2.5 MB of tokenizer stays) and run."""
    loaded, gguf = exported["mamba2"]
    run = gguf.parent / "run"
    sizes = {"f32": gguf.stat().st_size}
    for dtype in ("f16", "q8_0"):
        path = tmp_path / f"{dtype}.gguf"
        export_run(run, path, dtype, loaded=loaded)
        sizes[dtype] = path.stat().st_size
        c = c_traces(runtime, path, PROMPTS[:2], "--max-loops", "3")
        assert [len(t["trace"]) for t in c] == [3, 3]
        assert c[0]["input_ids"] == reference(loaded, PROMPTS[0], 3)["input_ids"]
    assert sizes["f16"] < 0.6 * sizes["f32"] and sizes["q8_0"] < 0.4 * sizes["f32"], sizes


# ----------------------------------------------------------------------------------------------- bad input

def data_bounds(gguf: Path) -> tuple[int, int]:
    """Where the tensor data starts (the end of the metadata and tensor infos) and ends (before the end padding)."""
    from gguf import GGUFReader

    r = GGUFReader(str(gguf))
    return min(t.data_offset for t in r.tensors), max(t.data_offset + t.n_bytes for t in r.tensors)


def test_damaged_file_is_a_clear_error(runtime, exported, tmp_path):
    """Truncated at every part of the file, or with its header bytes flipped: exit 2 with a message (or, for a
    harmless flip, a normal run), never a signal; checked under AddressSanitizer when the compiler has it."""
    _, gguf = exported["mamba2"]
    try:  # reads past the mapping or a buffer fail loudly under ASan instead of by luck
        binary = build_runtime(tmp_path / "rlf-run-asan", ("-g", "-fsanitize=address,undefined",
                                                           "-fno-sanitize-recover=all"))
        subprocess.run([str(binary), "--help"], capture_output=True, timeout=30, check=False)
    except RLFError:
        binary = runtime
    bad = tmp_path / "bad.gguf"
    shutil.copy(gguf, bad)
    end, data_end = data_bounds(gguf)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")

    def check(case: str, expect: str | None = None) -> None:
        done = subprocess.run([str(binary), str(bad), "--max-loops", "1", "x"], capture_output=True, timeout=60,
                              env=env)
        err = done.stderr.decode(errors="replace")
        assert done.returncode in (0, 2), (case, done.returncode, err[-2000:])
        if done.returncode == 2:
            assert err.startswith("rlf-run: error: ") and err.count("\n") == 1, (case, err)
        if expect is not None:
            assert done.returncode == 2 and expect in err, (case, err)

    raw = bytearray(gguf.read_bytes()[:end])
    rng = random.Random(0)
    with open(bad, "r+b") as f:
        for case in range(60):  # flip 1-4 bytes of the metadata / tensor infos, then restore them
            spots = [rng.randrange(4, end) for _ in range(rng.randint(1, 4))]
            for s in spots:
                f.seek(s)
                f.write(bytes([raw[s] ^ (1 << rng.randrange(8))]))
            f.flush()
            check(f"flip {spots}")
            for s in spots:
                f.seek(s)
                f.write(bytes([raw[s]]))
        f.seek(0)
        f.write(b"GGUX")
        f.flush()
        check("magic", "not a GGUF file")
        f.seek(0)
        f.write(b"GGUF\x02\0\0\0")
        f.flush()
        check("version", "GGUF version 2")
        f.seek(4)
        f.write(raw[4:8])
        f.seek(8)
        f.write((2**62).to_bytes(8, "little"))
        f.flush()
        check("tensor count", "cannot fit")
        f.seek(8)
        f.write(raw[8:16])
    for cut in sorted({data_end - 1, end + 64, end, end - 1, end - 100, end // 2, end // 7, 1000, 100, 30, 23, 8, 3, 0},
                      reverse=True):
        os.truncate(bad, cut)
        check(f"truncated to {cut} bytes", "not a GGUF file" if cut < 24 else "truncated or corrupt")
    bad.unlink()
    check("missing", "cannot open")


def test_runtime_refuses_bad_options(runtime, exported):
    _, gguf = exported["mamba2-options"]
    for args, expect in ([["--loop-clamp", "2", "x"], "loop_pos=none"], [["--max-loops", "0", "x"], "--max-loops 0"],
                         [["--bogus", "x"], "unknown option --bogus"], [["   "], "empty prompt"], [[], "no prompt"]):
        done = run_c(runtime, gguf, *args, check=False)
        assert done.returncode == 2 and expect in done.stderr.decode(), (args, done.stderr)


@pytest.mark.parametrize("overrides,expect", [(["core=mamba1"], "core=mamba1"), (["base=tiny-gpt2"], "tiny-gpt2"),
                                              (["base=tiny-mamba2"], "tiny-mamba2"),
                                              (["loop_span=answer"], "loop_span=answer"),
                                              (["core=transformer", "core_pos=rope"], "core_pos=rope")])
def test_export_refuses_what_the_runtime_lacks(tmp_path, capsys, overrides, expect):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(load_config("tiny", overrides).to_dict()))
    assert main(["export", str(run), str(tmp_path / "out.gguf")]) == 2
    err = capsys.readouterr().err
    assert "rlf export: error:" in err and expect in err and "Traceback" not in err, err
    assert not (tmp_path / "out.gguf").exists()


def test_export_command(exported, tmp_path, capsys):
    _, gguf = exported["mamba2"]
    out = tmp_path / "cli.gguf"
    assert main(["export", str(gguf.parent / "run"), str(out), "--dtype", "f16"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "f16" in printed and "core mamba2" in printed and out.stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary left behind


def test_export_checks_its_arguments(exported, tmp_path):
    _, gguf = exported["mamba2"]
    with pytest.raises(RLFError, match="end in .gguf"):
        export_run(gguf.parent / "run", tmp_path / "out.bin")
    with pytest.raises(RLFError, match="does not exist"):
        export_run(gguf.parent / "run", tmp_path / "nowhere" / "out.gguf")
    with pytest.raises(RLFError, match="--dtype q4"):
        export_run(gguf.parent / "run", tmp_path / "out.gguf", "q4")


def test_export_is_c99_and_warning_free(tmp_path):
    if shutil.which("gcc") is None and shutil.which("clang") is None:
        pytest.skip("strict build flags are checked with gcc or clang")
    build_runtime(tmp_path / "strict", ("-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"))


# ----------------------------------------------------------------------------------------------- embedded base

def test_embedded_base_matches_solve(runtime, embedded_base, tmp_path_factory, cache_dir):
    """A short-trained Mamba2 run on SmolLM2-135M (first 6 layers, rope θ 1e5, 9 query / 3 key-value heads):
    the real tokenizer, the real encoder, the trained loop. In float32: the runtime computes in float32, and a
    bf16 run's `solve` encodes under bf16 autocast (0.6% mean error per position), so their traces differ a little."""
    run = tmp_path_factory.mktemp("smol") / "run"
    cfg = load_config("default", ["n_train=32", "n_val=8", "batch_size=8", "max_steps=12", "lr=3e-3",
                                  "warmup_steps=2", "early_stop_patience=0", "device=cpu", "val_every=12", "bf16=false",
                                  "ckpt_every=12", f"cache_dir={cache_dir}"])
    train(cfg, run, progress=False, base=embedded_base)
    loaded = load_run(run, device="cpu", base=embedded_base)
    gguf = run.parent / "smol.gguf"
    info = export_run(run, gguf, "f32", loaded=loaded)
    assert info["encoder_layers"] == 6 and info["tied_head"]
    prompts = ["A = moon. B = A. C = B. What is C?", "Q = red. Z = Q. What is Z?", PROMPTS[2], PROMPTS[3]]
    for prompt, c in zip(prompts, c_traces(runtime, gguf, prompts, "--max-loops", "6")):
        assert_same(c, reference(loaded, prompt, 6), prompt)
