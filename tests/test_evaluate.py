"""Evaluation: metrics on hand-built traces, Wilson intervals, inference ablations, `rlf eval` on a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlf.cli import main
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.evaluate import evaluate, evaluate_split, parse_ablations, rate, score, summarize, wilson
from rlf.tasks import generate, write_jsonl
from rlf.train import LoadedRun, build_model, prepare_split

from eval_helpers import randomized_model

pytestmark = pytest.mark.usefixtures("one_thread")

H = 9  # <HALT> id in the hand-built traces
TARGET = [1, 2, 3]  # two pointers, then the answer 3; <HALT> belongs at loop 4 (index 3)


def one(trace, p_halt=None, target=TARGET):
    s = score([trace], [p_halt or [0.0] * len(trace)], [target], H)
    return {k: v[0] for k, v in s.items()}


def test_exact_trace_is_right_everywhere():
    s = one([1, 2, 3, H], [0.0, 0.0, 0.1, 0.9])
    assert s["trace_ok"] and s["answer_ok"] and s["halted"] and s["halt_hit"]
    assert s["halt_p"] == pytest.approx(0.9)
    assert s["loop_ok"].all()


def test_premature_halt():
    s = one([1, 2, H, H])
    assert not s["trace_ok"] and not s["answer_ok"]  # the token before <HALT> is a pointer
    assert s["halted"] and not s["halt_hit"] and s["halt_loop"] == 2
    assert s["loop_ok"].tolist() == [True, True, False, True]  # loop 4 wants <HALT> and gets it


def test_late_halt_keeps_the_answer_but_not_the_trace():
    s = one([1, 2, 3, 3, H])
    assert not s["trace_ok"] and s["answer_ok"]
    assert s["halted"] and not s["halt_hit"]


def test_right_answer_with_a_wrong_intermediate_pointer():
    s = one([1, 7, 3, H])
    assert not s["trace_ok"] and s["answer_ok"] and s["halt_hit"]
    assert s["loop_ok"].tolist() == [True, False, True, True]


def test_no_halt_within_max_loops():
    for trace in ([1, 2, 3, 3, 3, 3], [1, 2]):  # ran long without halting; stopped before the target halt loop
        s = one(trace)
        assert not s["trace_ok"] and not s["answer_ok"] and not s["halted"] and not s["halt_hit"]
    assert np.isnan(one([1, 2])["halt_p"])  # the target halt loop never ran


def test_a_target_past_a_halt_does_not_count():
    s = one([1, H, 3, H])  # emits the answer after it already halted
    assert not s["trace_ok"] and not s["answer_ok"] and s["halt_loop"] == 1
    assert s["loop_ok"].tolist() == [True, False, False, True]


def test_summary_counts_precision_recall_and_per_loop():
    traces = [[1, 2, 3, H], [1, 2, H, H], [1, 7, 3, H], [1, 2, 3, 3, 3, 3], [5, H]]
    targets = [TARGET, TARGET, TARGET, TARGET, [5]]
    p_halt = [[0, 0, 0, 0.8], [0, 0, 0.7, 0.7], [0, 0, 0, 0.6], [0] * 6, [0, 1.0]]
    m = summarize(score(traces, p_halt, targets, H))
    assert m["n"] == 5
    assert (m["trace_acc"]["k"], m["answer_acc"]["k"]) == (2, 3)
    assert (m["halt_precision"]["k"], m["halt_precision"]["n"]) == (3, 4)  # one example never halted
    assert (m["halt_recall"]["k"], m["halt_recall"]["n"]) == (3, 5)
    assert m["mean_halt_p"] == pytest.approx((0.8 + 0.7 + 0.6 + 0 + 1.0) / 5)  # solve repeats a halted example's p
    assert [(r["k"], r["n"]) for r in m["per_loop_acc"]] == [(5, 5), (4, 5), (3, 4), (3, 4)]


def test_wilson_interval():
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = wilson(999, 1000)
    assert 0.994 < lo < 0.995 and hi > 0.9998
    assert rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": [0.0, 1.0]}


def test_parse_ablations():
    assert parse_ablations("zero, noise,shuffle,scale=0.5") == {
        "zero": {"gate_scale": 0.0}, "noise": {"prompt_mode": "noise"}, "shuffle": {"prompt_mode": "shuffle"},
        "scale=0.5": {"gate_scale": 0.5}}
    assert parse_ablations("clamp=3,offset=2") == {"clamp=3": {"loop_clamp": 3}, "offset=2": {"loop_offset": 2}}
    assert parse_ablations("none") == {}
    for bad in ("sever", "scale=x", "clamp=x", "offset=-1"):
        with pytest.raises(RLFError, match="--ablate"):
            parse_ablations(bad)


# ----------------------------------------------------------------------------------------------- ablations

@pytest.fixture(scope="module")
def tiny_split(tiny_llama, tmp_path_factory):
    cfg = load_config("tiny", [f"cache_dir={tmp_path_factory.mktemp('cache')}"])
    examples = generate("chain", 12, [1, 2, 3], 5, tiny_llama.tokenizer)
    return prepare_split(examples, tiny_llama, cfg, "test", progress=False)


def test_scale_one_equals_intact_and_zero_differs(tiny_llama, tiny_split):
    model = randomized_model(tiny_llama)
    res = evaluate_split(model, tiny_split, parse_ablations("scale=1.0,zero"), max_loops=6)
    same = res["scale=1.0"]["overall"]
    assert same["loop_agreement"]["rate"] == 1.0
    assert {k: v for k, v in same.items() if k != "loop_agreement"} == res["intact"]["overall"]
    assert res["zero"]["overall"]["loop_agreement"]["rate"] < 1.0  # severing a random gate changes something


def test_by_answer_splits_the_examples_by_whether_their_answer_was_trained(tiny_llama, tiny_split):
    model = randomized_model(tiny_llama)
    answers = {ex.answer for ex in tiny_split.examples[::2]}
    res = evaluate_split(model, tiny_split, parse_ablations("zero"), max_loops=6, trained_answers=answers)
    seen = sum(ex.answer in answers for ex in tiny_split.examples)
    for cond in ("intact", "zero"):
        groups, overall = res[cond]["by_answer"], res[cond]["overall"]
        assert (groups["seen"]["n"], groups["unseen"]["n"]) == (seen, len(tiny_split.examples) - seen)
        for metric in ("trace_acc", "answer_acc"):
            assert groups["seen"][metric]["k"] + groups["unseen"][metric]["k"] == overall[metric]["k"]
    everything = {ex.answer for ex in tiny_split.examples}
    all_seen = evaluate_split(model, tiny_split, max_loops=6, trained_answers=everything)["intact"]["by_answer"]
    assert all_seen["seen"] == res["intact"]["overall"] and all_seen["unseen"]["n"] == 0
    assert "by_answer" not in evaluate_split(model, tiny_split, max_loops=6)["intact"]


def test_zero_on_a_model_without_lifeline_changes_nothing(tiny_llama, tiny_split):
    model = randomized_model(tiny_llama, lifeline="none")
    res = evaluate_split(model, tiny_split, parse_ablations("zero,noise,shuffle"), max_loops=6)
    for cond in ("zero", "noise", "shuffle"):
        assert res[cond]["overall"]["loop_agreement"]["rate"] == 1.0
        assert res[cond]["overall"]["trace_acc"] == res["intact"]["overall"]["trace_acc"]


def test_clock_ablations_are_refused_up_front_without_a_loop_position(tiny_llama, tmp_path, monkeypatch):
    cfg = load_config("tiny", ["loop_pos=none"])
    run = LoadedRun(cfg, build_model(cfg, tiny_llama), tiny_llama)
    monkeypatch.setattr("rlf.evaluate.eval_sets", lambda *a, **k: pytest.fail("refused before any evaluation"))
    with pytest.raises(RLFError, match="no loop position"):
        evaluate(tmp_path, hops="1", n=2, ablations="zero,clamp=3", run=run, write=False)


def test_shuffle_keeps_the_multiset_of_prompt_vectors(tiny_llama):
    model = randomized_model(tiny_llama)
    x = torch.randn(3, 7, tiny_llama.hidden_size)
    lengths = torch.tensor([7, 5, 2])
    x[1, 5:] = 0
    x[2, 2:] = 0
    shuffled = model.lifeline_source(x, lengths, "shuffle", torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, x)
    for b, n in enumerate(lengths.tolist()):
        def rows(t):
            return sorted(map(tuple, t[b, :n].tolist()))
        assert rows(shuffled) == rows(x)  # the same vectors, in another order
        assert torch.equal(shuffled[b, n:], x[b, n:])  # padding stays padding


def test_evaluate_writes_json_and_markdown(tiny_llama, tmp_path):
    cfg = load_config("tiny", [f"cache_dir={tmp_path / 'cache'}", "hops=1-2"])
    run = LoadedRun(cfg, randomized_model(tiny_llama), tiny_llama)
    res = evaluate(tmp_path, hops="1,2,4", n=6, ablations="zero", run=run, progress=False)
    assert set(res["splits"]) == {"in-distribution", "ood"}
    assert res["splits"]["ood"]["hops"] == [4]
    ood = res["splits"]["ood"]["conditions"]
    assert ood["intact"]["overall"]["n"] == 6 and len(ood["intact"]["overall"]["per_loop_acc"]) == 6
    assert json.loads((tmp_path / "eval.json").read_text())["splits"]["in-distribution"]["n"] == 12
    md = (tmp_path / "eval.md").read_text()
    assert "Wilson" in md and "| zero | all |" in md and "halt precision" in md
    assert (tmp_path / "eval_data" / "ood.jsonl").is_file()
    assert "by_answer" not in ood["intact"]  # no train.jsonl in the run directory: nothing to compare with

    write_jsonl(generate("chain", 20, [1, 2], 99, tiny_llama.tokenizer), tmp_path / "train.jsonl")
    res = evaluate(tmp_path, hops="1,2", n=6, ablations="none", run=run, progress=False)
    groups = res["splits"]["in-distribution"]["conditions"]["intact"]["by_answer"]
    assert groups["seen"]["n"] + groups["unseen"]["n"] == 12
    assert "answer word seen as a training answer or not" in (tmp_path / "eval.md").read_text()


def test_cli_eval_errors_are_clear(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- memory

LEAK_SCRIPT = """
import json, torch
from rlf.bench_memory import fit_growth, measure_peaks
kept = []
def leaky(n):  # keeps 4 MB per loop
    for _ in range(n):
        kept.append(torch.ones(2**20))
def flat(n):  # 4 MB per loop, freed before the next
    for _ in range(n):
        x = torch.ones(2**20)
        del x
loops = [1, 2, 4, 8, 16]
grows = fit_growth(loops, measure_peaks(leaky, loops, torch.device("cpu"))["peak_mb"], state_mb=4.0)
kept.clear()
steady = fit_growth(loops, measure_peaks(flat, loops, torch.device("cpu"))["peak_mb"], state_mb=4.0)
print(json.dumps([grows, steady]))
"""


def run_fresh(script: str) -> object:
    """Run a measurement in a fresh process (a process that ran other tests has allocator state of its own)."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_memory_bench_tells_flat_from_growing():
    grows, steady = run_fresh(LEAK_SCRIPT)
    assert grows["growth_mb_per_loop"] > 3.5 and not grows["flat"]  # >= 4 MB: RSS may round up to huge pages
    assert steady["flat"], steady


def test_flat_rule_tolerates_allocator_settling_but_not_a_per_loop_state():
    from rlf.bench_memory import fit_growth

    loops = [1, 2, 4, 8, 16, 32, 64]
    settling = [50.38, 62.57, 62.62, 63.43, 65.88, 67.24, 68.32]  # measured: the demo's run, batch 16 x 32 x 576
    assert not fit_growth(loops, settling)["flat"]  # +5.7 MB over the range: above 1 MB / 5% on its own
    assert fit_growth(loops, settling, state_mb=1.125)["flat"]  # but ~0.1 MB/loop, under a tenth of a loop state
    leak = [60 + 1.125 * n for n in loops]  # one loop state kept per loop (e.g. a KV cache)
    assert not fit_growth(loops, leak, state_mb=1.125)["flat"]
    assert not fit_growth(loops, [60 + 0.2 * n for n in loops], state_mb=1.125)["flat"]


MEMORY_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from eval_helpers import randomized_model
from rlf.base import load_base
from rlf.bench_memory import bench_memory
from rlf.config import load_config
from rlf.train import LoadedRun
base = load_base("tiny-llama")
run = LoadedRun(load_config("tiny", ["cache_dir={tmp}"]), randomized_model(base), base)
print(json.dumps(bench_memory(run, {tmp!r}, loops=[1, 2, 4, 8, 16, 24], batch_size=16)))
"""


def test_solve_memory_is_flat(tmp_path):
    """In a fresh process: RSS in a process that ran other tests depends on what the allocator kept."""
    res = run_fresh(MEMORY_SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path)))
    assert (tmp_path / "memory.json").is_file() and "peak MB" in (tmp_path / "memory.md").read_text()
    assert res["flat"], {k: res[k] for k in ("peak_mb", "growth_mb_per_loop", "method", "flat_rule")}
