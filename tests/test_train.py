import json

import pytest
import torch
from safetensors.torch import load_file

from rlf.base import load_base
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.evaluate import evaluate, evaluate_split
from rlf.tasks import read_jsonl
from rlf.train import batch_order, load_run, prepare_split, train, train_or_reuse


def tiny_cfg(tmp_path, *overrides):
    return load_config("tiny", [f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_batch_order_is_a_deterministic_bucketed_epoch():
    sizes = [1 + i % 4 for i in range(256)]
    epoch = [batch_order(sizes, 16, 0, s) for s in range(16)]
    assert sorted(i for b in epoch for i in b) == list(range(256))  # each example once per epoch
    assert epoch == [batch_order(sizes, 16, 0, s) for s in range(16)]
    assert batch_order(sizes, 16, 0, 16) != epoch[0]  # a new permutation next epoch
    assert sum(len({sizes[i] for i in b}) for b in epoch) < 2 * len(epoch)  # batches share a loop count


def test_training_leaves_base_bit_identical_and_stores_only_trainable(tmp_path, tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    cfg = tiny_cfg(tmp_path, "n_train=64", "n_val=16", "max_steps=3", "val_every=3", "ckpt_every=3")
    train(cfg, tmp_path / "run", progress=False, base=tiny_llama)
    after = tiny_llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    stored = load_file(tmp_path / "run" / "model.safetensors")
    assert "lifeline_gate" in stored and "halt_row" in stored
    assert not any(k.startswith(("lm_head", "final_norm")) for k in stored)
    run = load_run(tmp_path / "run", base=tiny_llama)
    assert torch.equal(run.model.lifeline_gate, stored["lifeline_gate"])
    assert torch.equal(run.model.lm_head, tiny_llama.lm_head)
    for name in ("config.json", "model.json", "train.jsonl", "val.jsonl", "metrics.jsonl", "summary.md"):
        assert (tmp_path / "run" / name).is_file(), name
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_trace_acc" in x for x in lines) and all(x["step"] <= 3 for x in lines)


def test_tiny_model_learns_forward_chains(tmp_path):
    """A tiny model reaches >= 95% trace accuracy on held-out 1-3-hop forward chains.

    The base is tiny-gpt2: a forward trace names the statements in order, so the loop must find "the i-th
    statement", which needs position information in the frozen encodings. A random tiny Llama has none (RoPE
    acts inside attention only) and stalls near 40% trace accuracy, right on the first pointer and the value,
    wrong on the middle pointers; GPT-2's learned position embeddings give it. 32 names and 16 values keep
    the value copying within a test's time. Measured (one thread): val trace acc 0.385 at step 300, 0.91 at
    400, 0.98 at 500.
    """
    cfg = tiny_cfg(tmp_path, "base=tiny-gpt2", "name_pool=32", "value_pool=16", "n_train=20000", "max_steps=800",
                   "val_every=50", "ckpt_every=800", "early_stop_acc=0.95", "early_stop_patience=1")
    summary = train(cfg, tmp_path / "run", progress=False, base=load_base("tiny-gpt2"))
    assert summary["val_trace_acc"] >= 0.95, summary


def test_loop_span_answer_trains_and_reloads(tmp_path, tiny_llama):
    """An answer-span run learns (its loss falls) and reloads as an answer-span model that solves."""
    cfg = tiny_cfg(tmp_path, "loop_span=answer", "n_train=256", "n_val=16", "max_steps=40", "val_every=40",
                   "ckpt_every=20")
    train(cfg, tmp_path / "run", progress=False, base=tiny_llama)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert losses[-1] < 0.9 * losses[0], losses  # measured: 12.7 -> 10.6 in 40 steps
    run = load_run(tmp_path / "run", base=tiny_llama)
    assert run.model.cfg.loop_span == "answer"
    assert run.solve(["K = moon. P = K. What is P?"], max_loops=4)[0]


def train_learn_reload(cfg, out, base):
    """Train a phased chain run; its main-phase loss must fall, and the reloaded run must solve a chain prompt."""
    summary = train(cfg, out, progress=False, base=base)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and r.get("phase") == "main"]
    assert losses[-1] < losses[0], losses
    run = load_run(out, base=base)
    assert run.solve(["K = moon. P = K. What is P?"], max_loops=4)[0]
    return summary, run


def test_pointer_feedback_trains_through_chains_and_task_and_evaluates(tmp_path, tiny_llama):
    """feedback=pointer trains through the chain warm-up and the task (teacher-forced), reloads, solves, and
    `rlf eval` scores it on its own words' keys; validation's trace accuracy is the evaluation's."""
    cfg = tiny_cfg(tmp_path, "loop_span=answer", "feedback=pointer", "lifeline=none", "loop_pos=none",
                   "order=backward", "distractors=1", "n_train=256", "n_val=32", "max_steps=40", "val_every=40",
                   "ckpt_every=40", "phases=[{name: chains, steps: 20, overrides: {supervision: chains}}, {name: main}]")
    summary, run = train_learn_reload(cfg, tmp_path / "run", tiny_llama)
    assert run.model.cfg.feedback == "pointer"
    result = evaluate(tmp_path / "run", run=run, hops="1-3", n=8, ablations="", progress=False, write=False)
    assert result["splits"]["in-distribution"]["n"] == 24
    val = prepare_split(read_jsonl(tmp_path / "run" / "val.jsonl"), tiny_llama, run.config, "val", False)
    assert val.prompt_ids is not None
    scored = evaluate_split(run.model, val, {})["intact"]["overall"]["trace_acc"]
    assert scored["k"] == round(summary["val_trace_acc"] * 32), (scored, summary)


def test_copy_readout_trains_through_the_lookup_warm_up_and_refuses_words_outside_the_prompt(tmp_path, tiny_llama):
    """readout=copy trains (lookup warm-up, then the task), reloads and evaluates; a target the prompt lacks is refused
    naming the file and example, and so is the chain warm-up (its cut prompts lack their values)."""
    over = ("core=transformer", "core_pos=conv", "loop_span=answer", "feedback=pointer", "readout=copy",
            "lifeline=none", "loop_pos=none", "order=backward", "distractors=1", "n_train=256", "n_val=32",
            "val_every=40", "ckpt_every=40")
    cfg = tiny_cfg(tmp_path, *over, "max_steps=40",
                   "phases=[{name: lookup, steps: 10, overrides: {supervision: lookup}}, {name: main}]")
    _, run = train_learn_reload(cfg, tmp_path / "run", tiny_llama)
    assert run.model.cfg.readout == "copy"
    result = evaluate(tmp_path / "run", run=run, hops="1-2", n=8, ablations="", progress=False, write=False)
    assert result["splits"]["in-distribution"]["n"] == 16
    bad = read_jsonl(tmp_path / "run" / "val.jsonl")[:2]
    bad[1].targets[-1] = "sun" if "sun" not in bad[1].prompt else "star"
    with pytest.raises(RLFError, match=r"bad\.jsonl: example 2 .* not a word of its prompt"):
        prepare_split(bad, tiny_llama, run.config, "bad.jsonl", False)
    chains = tiny_cfg(tmp_path, *over, "max_steps=4",
                      "phases=[{name: chains, steps: 2, overrides: {supervision: chains}}, {name: main}]")
    with pytest.raises(RLFError, match="supervision=chains .* readout=copy"):
        train(chains, tmp_path / "chains", progress=False, base=tiny_llama)


def test_pointer_feedback_warns_of_a_word_its_prompt_tokenises_differently_somewhere(tmp_path, tiny_llama, caplog):
    """With template "{prompt}" the first statement's name (`MK = C.`) is split into other tokens than the same word
    elsewhere (` MK`), so a lookup by token cannot find that statement: training on such prompts is warned about,
    naming the split and its count; a template that puts a separator and a space first is clean."""
    from rlf.tasks import Example

    prompts = ["MK = C. SR = MK. What is SR?", "SR = MK. MK = C. What is SR?", "SR = MK. MK = C. What is MK?"]
    examples = [Example(id=f"e{i}", task="chain", prompt=p, targets=["MK", "C"] if "SR?" in p else ["C"],
                        answer="C", hops=2 if "SR?" in p else 1) for i, p in enumerate(prompts)]
    over = ("core=transformer", "loop_span=answer", "feedback=pointer", "lifeline=none", "loop_pos=none")
    with caplog.at_level("WARNING", logger="rlf.train"):
        prepare_split(examples, tiny_llama, tiny_cfg(tmp_path, *over, "template={prompt}"), "data.jsonl", False)
    warned = [r.getMessage() for r in caplog.records if "not its own token" in r.getMessage()]
    assert len(warned) == 1 and "in 1 of 3 prompts" in warned[0] and "example 1, 'MK'" in warned[0], warned
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlf.train"):
        prepare_split(examples, tiny_llama, tiny_cfg(tmp_path, *over, "template=<|endoftext|> {prompt}"), "data.jsonl",
                      False)
    assert not [r for r in caplog.records if "not its own token" in r.getMessage()]


def test_train_or_reuse_reads_a_config_saved_before_a_key_existed(tmp_path, monkeypatch):
    cfg = load_config("tiny", [])
    saved = cfg.to_dict()
    del saved["extra_halt_loops"]  # as written by a version without the key (it is at its default)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 7}))
    monkeypatch.setattr("rlf.train.train", lambda *a, **k: pytest.fail("a finished run with this config is reused"))
    assert train_or_reuse(cfg, tmp_path, base=None) == {"steps": 7}
    with pytest.raises(RLFError, match="another config"):
        train_or_reuse(load_config("tiny", ["lr=0.1"]), tmp_path, base=None)


def test_train_or_reuse_resumes_an_unfinished_run_with_another_length(tmp_path, monkeypatch):
    """An interrupted run resumes under a changed max_steps (how long is not what is trained); a finished one
    is reused only with exactly its config, and an unfinished one still refuses a change of what is trained."""
    cfg = load_config("tiny", [])
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text("{}")
    calls = []
    monkeypatch.setattr("rlf.train.train", lambda c, out, resume, base: calls.append((c.max_steps, resume)) or {})
    train_or_reuse(load_config("tiny", ["max_steps=120"]), tmp_path)
    assert calls == [(120, True)]
    with pytest.raises(RLFError, match="another config"):
        train_or_reuse(load_config("tiny", ["lr=0.1"]), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 400}))
    with pytest.raises(RLFError, match="another config"):
        train_or_reuse(load_config("tiny", ["max_steps=120"]), tmp_path)
    assert train_or_reuse(cfg, tmp_path) == {"steps": 400}
