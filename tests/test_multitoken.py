"""Multi-token loop targets (target_tokens = K > 1): reader -> targets -> loss -> solve -> eval, a tiny model that
learns 2-token values, the refusals, and target_tokens = 1 reproducing the single-token path bit for bit."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pre_multitoken as before
from rlf import evaluate as evaluate_module
from rlf import train as train_module
from rlf.cli import main
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.evaluate import evaluate, run_solve, score
from rlf.model import IGNORE, loop_loss, loop_targets, loops_needed, word_of
from rlf.tasks import Example, check_jsonl, read_jsonl, write_jsonl
from rlf.train import build_model, load_run, prepare_split, target_ids_of, train

COLOURS = ["red", "blue", "green", "black"]
ANIMALS = ["fox", "cat", "dog", "bird"]
NAMES = ["K", "P", "Z", "W", "Q", "R", "T", "M"]


def pair_chains(n: int, seed: int, prefix: str) -> list[Example]:
    """1-hop chains whose value is a 2-token word ("red fox") or, one time in five, a 1-token word ("fox")."""
    rng = random.Random(seed)
    values = [f"{c} {a}" for c in COLOURS for a in ANIMALS] + ANIMALS
    out = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        v = rng.choice(values)
        out.append(Example(f"{prefix}-{i}", "pairs", f"{a} = {v}. {b} = {a}. What is {b}?", [a, v], v, 1))
    return out


def line(**fields) -> str:
    row = {"id": "a", "task": "pairs", "prompt": "K = red fox. P = K. What is P?", "targets": ["K", "red fox"],
           "answer": "red fox", "hops": 1, **fields}
    return json.dumps(row) + "\n"


# ----------------------------------------------------------------------------------------------- reader, data check

def test_reader_takes_targets_up_to_k_tokens_and_names_longer_ones(tmp_path, tiny_llama):
    tok = tiny_llama.tokenizer
    assert len(tok(" red fox", add_special_tokens=False)["input_ids"]) == 2  # the premise of these tests
    assert len(tok(" big red fox", add_special_tokens=False)["input_ids"]) == 3
    path = tmp_path / "d.jsonl"
    path.write_text(line() + line(id="b", targets=["K", "big red fox"], answer="big red fox") + line(id="c"))
    report = check_jsonl(path, tok, 2)
    assert [ex.id for ex in report.examples] == ["a", "c"]
    assert [str(e) for e in report.errors] == [
        f"{path}:2: field 'targets[1]': 'big red fox' is 3 tokens with a leading space [' big', ' red', ' fox'], "
        "not 1 to 2 (target_tokens=2)"]
    assert len(check_jsonl(path, tok, 3).examples) == 3
    with pytest.raises(RLFError, match=rf"(?m){path}:1: field 'targets\[1\]': 'red fox' is 2 tokens .*, not 1$"):
        read_jsonl(path, tok)  # the default stays one token per loop
    with pytest.raises(RLFError, match=rf"{path}:2: field 'targets\[1\]'"):
        read_jsonl(path, tok, max_tokens=2)


@pytest.mark.parametrize("target", ["", "   ", "\t"])
def test_reader_refuses_empty_and_whitespace_targets_at_any_k(tmp_path, tiny_llama, target):
    path = tmp_path / "d.jsonl"
    path.write_text(line() + line(id="b", targets=[target, "red fox"]))
    for k in (1, 2, 4):
        with pytest.raises(RLFError, match=rf"{path}:2: field 'targets\[0\]': is empty"):
            read_jsonl(path, tiny_llama.tokenizer, max_tokens=k)


def test_data_check_takes_target_tokens(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(line() + line(id="b", targets=["K", "big red fox"], answer="big red fox"))
    assert main(["data", "check", str(path), "--base", "tiny-llama", "--target-tokens", "2"]) == 1
    out = capsys.readouterr().out
    assert "2 lines, 1 valid, 1 invalid" in out and f"{path}:2: field 'targets[1]': 'big red fox' is 3 tokens" in out
    assert main(["data", "check", str(path), "--base", "tiny-llama", "--target-tokens", "3"]) == 0
    assert main(["data", "check", str(path), "--base", "tiny-llama"]) == 1  # K = 1: both lines have a 2+-token word
    assert "2 invalid" in capsys.readouterr().out
    assert main(["data", "check", str(path), "--base", "tiny-llama", "--target-tokens", "0"]) == 2
    assert "--target-tokens 0: must be 1 or more" in capsys.readouterr().err


def test_training_refuses_a_target_longer_than_k(tmp_path, capsys, cache_dir):
    data = tmp_path / "train.jsonl"
    data.write_text(line(targets=["K", "big red fox"], answer="big red fox"))
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), f"train_file={data}", "target_tokens=2",
                 f"cache_dir={cache_dir}", "n_val=4", "max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert f"{data}: example 1 (id a), targets[1]: target 'big red fox' is 3 tokens" in err and "not 1 to 2" in err
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "target_tokens=0"]) == 2
    assert "target_tokens=0: must be positive" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- targets and loss

def test_loop_targets_pad_a_short_word_with_the_end_marker_then_ignore():
    H = 99
    t = loop_targets([[(5,), (6, 7, 8)], [(9, 10)]], H, 4, slots=3)  # (B, L, K)
    assert t.tolist() == [[[5, H, IGNORE], [6, 7, 8], [H, IGNORE, IGNORE], [H, IGNORE, IGNORE]],
                          [[9, 10, H], [H, IGNORE, IGNORE], [H, IGNORE, IGNORE], [H, IGNORE, IGNORE]]]
    final = loop_targets([[(5,), (6, 7)]], H, 3, "final", slots=2)
    assert final.tolist() == [[[IGNORE, IGNORE], [6, 7], [H, IGNORE]]]
    assert loop_targets([[(5,), (6, 7)]], H, 1, "answer_once", slots=2).tolist() == [[[6, 7]]]
    with pytest.raises(ValueError, match="example 0: a target of 3 tokens does not fit 2 slots"):
        loop_targets([[(1, 2, 3)]], H, 2, slots=2)
    # word_of writes a predicted word the way targets are written: so "all slots equal" is "same word"
    assert word_of(torch.tensor([[5, H, 3], [6, 7, 8], [H, 4, H], [5, 6, H]]), H).tolist() == [
        [5, H, IGNORE], [6, 7, 8], [H, IGNORE, IGNORE], [5, 6, H]]


def test_slot_loss_is_the_mean_token_cross_entropy_and_a_loop_needs_every_slot():
    g = torch.Generator().manual_seed(0)
    V, H = 11, 10
    targets = loop_targets([[(1, 2), (3,)], [(4,)]], H, 3, slots=2)  # (2, 3, 2)
    logits = torch.randn(2, 3, 2, V, generator=g, requires_grad=True)
    loss, stats = loop_loss(logits, targets)
    pairs = [(b, i, k) for b in range(2) for i in range(3) for k in range(2) if targets[b, i, k] != IGNORE]
    by_hand = torch.stack([-logits[b, i, k].log_softmax(-1)[targets[b, i, k]] for b, i, k in pairs]).mean()
    assert torch.allclose(loss, by_hand)
    loss.backward()
    assert logits.grad[1, 1, 1].abs().sum() == 0  # an ignored slot (after <HALT>) gets no gradient
    # make every supervised slot right except the end marker of example 1's first loop
    right = torch.full((2, 3, 2, V), -10.0)
    for b, i, k in pairs:
        right[b, i, k, targets[b, i, k]] = 10.0
    right[1, 0, 1] = 0.0
    right[1, 0, 1, 7] = 10.0  # a second token where the word (4,) should end
    _, stats = loop_loss(right, targets)
    assert stats["loop_hits"] == [1, 2, 2] and stats["trace_hits"] == 1 and stats["n"] == 2


def test_k_slots_add_only_slot_maps_and_start_as_slot_0(tiny_llama):
    one = build_model(load_config("tiny"), tiny_llama)
    two = build_model(load_config("tiny", ["target_tokens=2"]), tiny_llama)
    p1, p2 = dict(one.named_parameters()), dict(two.named_parameters())
    assert set(p2) - set(p1) == {"slot_maps"} and set(p1) <= set(p2)
    assert p2["slot_maps"].shape == (1, tiny_llama.hidden_size, tiny_llama.hidden_size)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)  # the slots draw no random numbers: the same start
    x, lengths = tiny_llama.encode_ids(tiny_llama.tokenize(["K = red fox. P = K. What is P?\nAnswer:"]))
    l1, l2 = one(x, lengths, 3), two(x, lengths, 3)  # (1, 3, V + 1), (1, 3, 2, V + 1)
    # equal up to float order (the head multiplies a (1, 3, 2, d) batch here, a (1, 3, d) one for K = 1)
    assert torch.allclose(l2[:, :, 0], l1, atol=1e-5) and torch.allclose(l2[:, :, 1], l1, atol=1e-5)


# ----------------------------------------------------------------------------------------------- a model that learns

@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_llama):
    """A K = 2 model trained on pair_chains (2-token values) until val trace accuracy >= 0.9: the run directory.

    Measured (one thread, sharing 2 cores): val trace acc 0 at step 50 (answer 0.6), 0.96 at step 100, ~35 s."""
    root = tmp_path_factory.mktemp("pairs")
    write_jsonl(pair_chains(2000, 0, "t"), root / "train.jsonl")
    write_jsonl(pair_chains(200, 1, "v"), root / "val.jsonl")
    cfg = load_config("tiny", [f"train_file={root / 'train.jsonl'}", f"val_file={root / 'val.jsonl'}",
                               "target_tokens=2", f"cache_dir={root / 'cache'}", "max_steps=300", "val_every=50",
                               "ckpt_every=300", "early_stop_acc=0.9", "early_stop_patience=1"])
    summary = train(cfg, root / "run", progress=False, base=tiny_llama)
    return root, summary


def test_a_tiny_model_learns_two_token_values(pair_run):
    _, summary = pair_run
    assert summary["val_trace_acc"] >= 0.9, summary


def test_solve_gives_each_loop_its_word_and_the_words_probability(pair_run, tiny_llama):
    root, _ = pair_run
    run = load_run(root / "run", base=tiny_llama)
    prompts = ["Q = green dog. M = Q. What is M?", "T = cat. K = T. What is K?"]
    traces = run.solve(prompts)
    assert [[s["token"] for s in t] for t in traces] == [["Q", "green dog", "<HALT>"], ["T", "cat", "<HALT>"]]
    assert traces[0][1]["tokens"] == [" green", " dog"] and traces[1][1]["tokens"] == [" cat"]
    # p is the product over the slots the word uses: its tokens, and the end marker after a 1-token word
    x, lengths = run.encode(prompts)
    with torch.no_grad():
        p = run.model(x, lengths, 3).softmax(-1)  # (2, 3, 2, V + 1)
    ids = lambda w: tiny_llama.tokenizer(" " + w, add_special_tokens=False)["input_ids"]  # noqa: E731
    green, dog = ids("green dog")
    assert traces[0][1]["p"] == pytest.approx(float(p[0, 1, 0, green] * p[0, 1, 1, dog]), rel=1e-4)
    assert traces[1][1]["p"] == pytest.approx(float(p[1, 1, 0, ids("cat")[0]] * p[1, 1, 1, run.model.halt_id]),
                                              rel=1e-4)
    assert traces[0][2]["p"] == pytest.approx(traces[0][2]["p_halt"])  # <HALT> is one decision, slot 0's


def test_rlf_solve_prints_whole_words(pair_run, capsys):
    root, _ = pair_run
    assert main(["solve", str(root / "run"), "Q = green dog. M = Q. What is M?"]) == 0
    out = capsys.readouterr().out
    assert "word" in out.splitlines()[1]
    assert any(r.split()[:3] == ["2", "green", "dog"] for r in out.splitlines()), out


def test_eval_scores_whole_words(pair_run, tiny_llama):
    root, summary = pair_run
    run = load_run(root / "run", base=tiny_llama)
    result = evaluate(root / "run", data_files=[root / "val.jsonl"], ablations="zero", run=run, progress=False)
    intact = result["splits"]["val"]["conditions"]["intact"]["overall"]
    assert intact["trace_acc"]["rate"] == summary["val_trace_acc"]  # eval (solve) and validate (forward) agree
    assert intact["answer_acc"]["rate"] >= 0.9 and intact["halt_precision"]["rate"] >= 0.9
    assert "zero" in result["splits"]["val"]["conditions"] and (root / "run" / "eval.md").is_file()
    # a word with its first token right and its second wrong is a wrong loop
    split = prepare_split(read_jsonl(root / "val.jsonl"), run.base, run.config, "val", False)
    words, p_halt = run_solve(run.model, split)
    s = score(words, p_halt, split.target_ids, run.model.halt_id)
    two = next(i for i, t in enumerate(split.target_ids) if len(t[1]) == 2 and s["trace_ok"][i])
    wrong = words.copy()
    wrong[two, 1, 1] = (wrong[two, 1, 1] + 1) % run.model.halt_id
    s2 = score(wrong, p_halt, split.target_ids, run.model.halt_id)
    assert not s2["trace_ok"][two] and not s2["answer_ok"][two] and not s2["loop_ok"][two, 1]
    assert s2["loop_ok"][two, 0] and s2["trace_ok"].sum() == s["trace_ok"].sum() - 1


def test_export_and_headline_refuse_multi_token_models(pair_run, tmp_path, capsys):
    root, _ = pair_run
    assert main(["export", str(root / "run"), str(tmp_path / "m.gguf")]) == 2
    assert "target_tokens=2" in capsys.readouterr().err
    from rlf.headline.plan import Job

    with pytest.raises(RLFError, match="target_tokens=2"):
        Job("m", "main", "forward", "mamba2", "tiny", ["target_tokens=2"], 10, True)


# ----------------------------------------------------------------------------------------------- K = 1 is unchanged

def _train_tiny(tmp_path, name, base):
    cfg = load_config("tiny", ["n_train=64", "n_val=16", "max_steps=6", "val_every=3", "ckpt_every=6", "log_every=1",
                               f"cache_dir={tmp_path / 'cache'}"])
    train(cfg, tmp_path / name, progress=False, base=base)
    weights = load_file(tmp_path / name / "model.safetensors")
    metrics = [{k: v for k, v in json.loads(r).items() if k not in ("examples_per_s", "train_seconds")}
               for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return weights, metrics


def test_single_token_training_and_eval_are_bit_identical_to_the_pre_change_path(tmp_path, tiny_llama, monkeypatch):
    """The same tiny config trained 6 steps with today's code and with the pre-change loss, targets and validation
    (tests/pre_multitoken.py): the same parameters, bit for bit, and the same losses and accuracies at every step;
    then the pre-change scoring of the same solve output gives the same metrics."""
    now_w, now_m = _train_tiny(tmp_path, "now", tiny_llama)
    with monkeypatch.context() as m:
        m.setattr(train_module, "loop_loss", before.loop_loss)
        m.setattr(train_module, "loop_targets", _before_loop_targets)
        m.setattr(train_module, "validate", before.validate)
        old_w, old_m = _train_tiny(tmp_path, "before", tiny_llama)
    assert set(now_w) == set(old_w) and not any("slot" in k for k in now_w)
    assert all(torch.equal(now_w[k], old_w[k]) for k in now_w)
    assert now_m == old_m and len(now_m) == 8  # 6 step records and 2 validations, losses compared exactly

    run = load_run(tmp_path / "now", base=tiny_llama)
    split = prepare_split(read_jsonl(tmp_path / "now" / "val.jsonl"), run.base, run.config, "val", False)
    assert split.target_ids == before_target_ids(split.examples, tiny_llama.tokenizer)
    tokens, p_halt = run_solve(run.model, split)
    assert tokens.ndim == 2  # one token per loop: no words
    new, old = score(tokens, p_halt, split.target_ids, run.model.halt_id, reference=tokens), \
        before.score(tokens, p_halt, split.target_ids, run.model.halt_id, reference=tokens)
    assert set(new) == set(old) and all(np.array_equal(new[k], old[k], equal_nan=True) for k in new)
    out = run.model.solve(*run.encode(["K = moon. P = K. What is P?"]))
    assert set(out) == {"tokens", "p", "p_halt", "halted_at"}
    assert evaluate_module.loop_targets is loop_targets


def _before_loop_targets(target_ids, halt_id, n_loops, supervision="per_loop", slots=1):
    assert slots == 1  # the single-token path asks for one slot, which the pre-change function had alone
    return before.loop_targets(target_ids, halt_id, n_loops, supervision)


def before_target_ids(examples, tokenizer) -> list[list[int]]:
    """One id per target, as the single-token reader made them."""
    return [[tokenizer(" " + t, add_special_tokens=False)["input_ids"][0] for t in ex.targets] for ex in examples]


def test_multi_token_ids_are_tuples_and_single_token_ones_ints(tiny_llama):
    ex = [Example("a", "pairs", "K = red fox. P = K. What is P?", ["K", "red fox"], "red fox", 1)]
    k, red, fox = (tiny_llama.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("K", "red", "fox"))
    assert target_ids_of(ex, tiny_llama.tokenizer, "s", 2) == [[(k,), (red, fox)]]
    assert loops_needed(target_ids_of(ex, tiny_llama.tokenizer, "s", 2)) == 3
    with pytest.raises(RLFError, match=r"s: example 1 \(id a\), targets\[1\]: target 'red fox' is 2 tokens"):
        target_ids_of(ex, tiny_llama.tokenizer, "s")
