"""`rlf bench headline`: the measurements on hand-built cases, the no-loop option, and `--quick` end to end."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlf.cli import main
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.evaluate import evaluate, fmt_rate
from rlf.headline import (ABLATIONS, answer_rates, base_answers, forced_tokens, halt_histogram, measure_clock,
                          parse_ablations, plan_jobs, run_headline, stability_outcomes, steps_cell, steps_to_accuracy,
                          summarize_stability)
from rlf.model import RLFModel
from rlf.tasks import generate
from rlf.train import Split, load_run, prepare_split, train, validate

from eval_helpers import all_finite, randomized_model

pytestmark = pytest.mark.usefixtures("one_thread")

H = 99  # <HALT> id in the hand-built traces


# ----------------------------------------------------------------------------------------------- stability

def test_stability_outcomes_on_hand_built_runs():
    targets = [[5, 7]] * 6  # one pointer, the answer 7, <HALT> at loop 3; forced to 6 loops
    tokens = np.array([
        [5, 7, H, H, H, H],    # right, and stays halted
        [5, 7, H, 7, H, H],    # right trace, but talks again after <HALT> (same answer)
        [5, 7, H, 8, H, H],    # talks again with another answer
        [5, 8, H, H, H, H],    # wrong answer, stable
        [5, 7, 7, 7, 7, 7],    # never halts
        [H, H, -1, -1, -1, -1],  # halts at once (and that batch ran only 2 loops)
    ])
    s = stability_outcomes(tokens, targets, H)
    assert s["first_halt"].tolist() == [2, 2, 2, 2, -1, 0]
    assert s["trace_ok"].tolist() == [True, True, True, False, False, False]
    assert s["absorbing"].tolist() == [True, False, False, True, False, True]
    assert s["answer_unchanged"].tolist() == [True, True, False, True, False, False]
    assert s["forced_ok"].tolist() == [True, False, False, False, False, False]
    m = summarize_stability(s)
    assert (m["forced_trace_acc"]["k"], m["forced_trace_acc"]["n"]) == (1, 6)
    assert (m["halt_absorbing"]["k"], m["halt_absorbing"]["n"]) == (3, 5)  # over the 5 that halt
    assert (m["answer_unchanged"]["k"], m["answer_unchanged"]["n"]) == (3, 5)


def test_halt_histogram_tracks_the_target_loop():
    first = np.array([2, 2, 1, -1, 4, 3])  # 0-based loop of the first <HALT>
    k = np.array([2, 2, 2, 2, 3, 3])  # targets per example: <HALT> belongs at index k
    hops = np.array([1, 1, 1, 1, 2, 2])
    h = halt_histogram(first, k, hops)
    assert h["1"]["counts"] == {"2": 1, "3": 2, "never": 1} and h["1"]["target_loop"] == [3]
    assert [h["1"][c]["k"] for c in ("early", "at_target", "late", "never")] == [1, 2, 0, 1]
    assert h["2"]["counts"] == {"4": 1, "5": 1} and h["2"]["target_loop"] == [4]
    assert [h["2"][c]["k"] for c in ("early", "at_target", "late", "never")] == [0, 1, 1, 0]


def test_answer_rates_and_steps_to_accuracy(tmp_path):
    r = answer_rates(np.array([1, 0, 1, 1]), np.array([1, 1, 2, 2]))
    assert r["overall"]["k"] == 3 and r["by_hops"]["1"]["k"] == 1 and r["by_hops"]["2"]["n"] == 2
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"step": 10, "loss": 1.0}, {"step": 50, "val_trace_acc": 0.5, "train_seconds": 5.0},
        {"step": 100, "val_trace_acc": 0.995, "train_seconds": 11.0}, {"step": 150, "val_trace_acc": 1.0}]) + "\n{cut")
    assert steps_to_accuracy(path) == {"threshold": 0.99, "step": 100, "train_seconds": 11.0}
    assert steps_to_accuracy(path, 1.01)["step"] is None
    assert steps_to_accuracy(tmp_path / "missing.jsonl")["step"] is None


def test_steps_cell_adds_the_encoding_cost_when_the_run_knows_it():
    def run(step, seconds, enc):
        return {"training": {"to_target": {"step": step, "train_seconds": seconds}, "encode_cost_seconds": enc}}
    assert steps_cell(run(1250, 1063.0, 268.5)) == "1250 (1063 s (17.7 min); 1332 s (22.2 min) with encoding from scratch)"
    assert steps_cell(run(100, 11.0, None)) == "100 (11.0 s)"
    assert steps_cell(run(None, None, 268.5)) == "not reached"


@pytest.fixture(scope="module")
def tiny_split(tiny_llama, tmp_path_factory):
    cfg = load_config("tiny", [f"cache_dir={tmp_path_factory.mktemp('cache')}"])
    examples = generate("chain", 10, [1, 2, 3], 11, tiny_llama.tokenizer)
    return prepare_split(examples, tiny_llama, cfg, "test", progress=False)


def test_forced_loop_agrees_with_solve_until_the_halt(tiny_llama, tiny_split, monkeypatch):
    """`solve` and the forced run compute the same loops until <HALT>; after it only the forced run shows what the
    loop would say (solve freezes a halted example). A tiny logit budget only splits batches."""
    model = randomized_model(tiny_llama)
    x, lengths, tids = tiny_split.batch(list(range(len(tiny_split.examples))))
    with torch.no_grad():  # a <HALT> row near the mean state of loop 2: some halt, and not all of them stay halted
        _, states = model(x, lengths, 4, return_states=True)
        centre = model.final_norm(states[:, 1]).mean(0)
        model.halt_row.copy_(10 * centre[None] / centre.norm() ** 2)
    tokens = forced_tokens(model, tiny_split)
    monkeypatch.setattr("rlf.headline.LOGIT_BUDGET", 1)
    assert np.array_equal(forced_tokens(model, tiny_split), tokens)  # one example per batch
    out = model.solve(x, lengths, tokens.shape[1], min_loops=tokens.shape[1])
    s = stability_outcomes(tokens, tids, model.halt_id)
    assert s["halted"].any() and not s["absorbing"].all()  # the check is not vacuous
    for row, first in enumerate(s["first_halt"]):
        assert out["halted_at"][row] == first
        stop = first + 1 if first >= 0 else 2 * (len(tids[row]) + 1)
        assert np.array_equal(out["tokens"][row, :stop].numpy(), tokens[row, :stop])


CHAT = "{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}<|assistant|>"


@pytest.mark.parametrize("chat", [False, True])
def test_base_answers_are_the_first_word_of_the_full_base_greedy_generation(monkeypatch, tiny_llama, chat):
    """Generation is the causal LM's own greedy continuation (final norm + LM head of the base with every layer,
    stopping at its end-of-sequence token), and the answer is the first generated word as a " word" token id, or
    -1; with `chat` the prompt is a chat user turn. Prompts of several token lengths share the call."""
    examples = generate("chain", 6, [1, 2, 3], 3, tiny_llama.tokenizer)
    template = "{prompt}\nAnswer:"
    tok = tiny_llama.tokenizer
    monkeypatch.setattr(tok, "chat_template", CHAT)
    preds = base_answers(tiny_llama, examples, template, batch_size=2, max_new_tokens=3, chat=chat)
    lengths = set()
    for ex, pred in zip(examples, preds):
        text = f"<|user|> {ex.prompt}\n<|assistant|>" if chat else template.replace("{prompt}", ex.prompt)
        ids = tok(text, add_special_tokens=not chat)["input_ids"]
        lengths.add(len(ids))
        new = []
        with torch.no_grad():
            while len(new) < 3 and (not new or new[-1] != tok.eos_token_id):
                new.append(tiny_llama.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax().item())
        words = tok.decode(new, skip_special_tokens=True).split()
        word = words[0].strip(".,;:!?\"'()") if words else ""
        single = tok(" " + word, add_special_tokens=False)["input_ids"] if word else []
        assert pred == (single[0] if len(single) == 1 else -1)
    assert len(lengths) > 1


def test_base_answers_score_the_first_word_not_the_first_token(monkeypatch, tiny_llama):
    """A base that starts with whitespace before the answer word, and ends its turn right after it, is credited
    with the word; one that ends its turn at once scores -1."""
    tok = tiny_llama.tokenizer
    moon = tok(" moon", add_special_tokens=False)["input_ids"]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(moon) == 1 and len(newline) == 1
    replies = iter([[newline[0], tok("moon", add_special_tokens=False)["input_ids"][0], tok.eos_token_id],
                    [tok.eos_token_id] * 3])

    def scripted(input_ids, **kw):  # the first call spells "\nmoon<eos>", the second "<eos>" (then padding)
        assert kw["max_new_tokens"] == 3 and not kw["do_sample"]
        return torch.cat([input_ids, torch.tensor([next(replies)] * input_ids.shape[0])], 1)

    monkeypatch.setattr(tiny_llama.model, "generate", scripted)
    examples = generate("chain", 1, [1], 0, tok)
    assert base_answers(tiny_llama, examples, "{prompt}", max_new_tokens=3).tolist() == [moon[0]]
    assert base_answers(tiny_llama, examples, "{prompt}", max_new_tokens=3).tolist() == [-1]

# ----------------------------------------------------------------------------------------------- the no-loop option

class _Encoded:
    def __init__(self, n):
        self.n = n

    def batch(self, idx, width=None):
        return torch.zeros(len(idx), 3, 4), torch.full((len(idx),), 3)


class _AnswerModel(torch.nn.Module):
    """Answers with token 7 at every loop, and records the loop counts it is asked for."""

    halt_id = 10

    def __init__(self):
        super().__init__()
        self.register_buffer("lm_head", torch.zeros(1))
        self.asked = []

    def forward(self, x, lengths, n_loops):
        self.asked.append(n_loops)
        return torch.nn.functional.one_hot(torch.full((x.shape[0], n_loops), 7), 11).float()


def test_validate_answer_once_reads_the_answer_at_loop_one():
    split = Split(examples=[None] * 3, encoded=_Encoded(3), target_ids=[[7], [3, 7], [3, 4]])
    model = _AnswerModel()
    res = validate(model, split, supervision="answer_once")
    assert model.asked == [1]
    assert res["val_trace_acc"] == res["val_answer_acc"] == pytest.approx(2 / 3)
    assert validate(model, split)["val_trace_acc"] == 0.0  # per loop: 7 everywhere is no trace


def test_answer_once_trains_one_loop_and_is_refused_by_eval(tmp_path, tiny_llama):
    cfg = load_config("tiny", [f"cache_dir={tmp_path / 'cache'}", "supervision=answer_once", "n_train=48",
                               "n_val=8", "hops=1-2", "batch_size=16", "max_steps=4", "val_every=2",
                               "ckpt_every=4", "log_every=2"])
    calls = []
    forward = RLFModel.forward

    def spy(self, x, lengths, n_loops, **kw):
        calls.append(n_loops)
        return forward(self, x, lengths, n_loops, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rlf.model.RLFModel.forward", spy)
        summary = train(cfg, tmp_path / "run", progress=False, base=tiny_llama)
    assert set(calls) == {1}  # training and validation: one pass of the core
    assert summary["val_trace_acc"] == summary["val_answer_acc"]
    with pytest.raises(RLFError, match="no-loop run"):
        evaluate(tmp_path / "run", hops="1", n=2, run=load_run(tmp_path / "run", base=tiny_llama), write=False)


def test_loop_clock_probe_needs_a_loop_position():
    run = SimpleNamespace(config=SimpleNamespace(loop_pos="none"))  # nothing else is touched: there is no clock
    assert measure_clock(run, Path("unused"), [1], 1, progress=False) is None


# ----------------------------------------------------------------------------------------------- options

def test_parse_ablations_and_plan():
    assert parse_ablations("on") == list(ABLATIONS) and parse_ablations("off") == []
    assert parse_ablations("lifeline=none, loop_pos=learned  max_loops=4") == ["lifeline=none",
                                                                               "loop_pos=learned max_loops=4"]
    for bad, msg in (("core=transformer", "key=value"), ("lifeline", "key=value"), ("lifeline=big", "lifeline"),
                     ("loop_pos=learned order=backward", "key=value"), ("loop_pos=learned max_loops=0", "max_loops")):
        with pytest.raises(RLFError, match=msg):
            parse_ablations(bad)
    jobs = plan_jobs("tiny", [], ["forward", "backward"], ["mamba2", "transformer"],
                     ["lifeline=none", "lifeline=vector", "loop_pos=learned max_loops=4"], 2)
    names = [j.name for j in jobs]
    assert names[-1] == "mamba2-forward-loop_pos-learned+max_loops-4"
    assert (jobs[-1].cfg.loop_pos, jobs[-1].cfg.max_loops) == ("learned", 4)
    jobs, names = jobs[:-1], names[:-1]
    assert names[:4] == ["mamba2-forward", "mamba2-forward-noloop", "transformer-forward", "transformer-forward-noloop"]
    assert names[-2:] == ["mamba2-forward-lifeline-none", "mamba2-forward"]  # lifeline=vector is the main run
    back = jobs[4].cfg
    assert (back.order, back.distractors, back.core) == ("backward", 2, "mamba2")
    assert jobs[1].cfg.supervision == "answer_once"
    common = {"seed", "lr", "n_train", "hops", "max_steps", "batch_size", "order", "distractors", "data_seed"}
    assert all(getattr(jobs[0].cfg, k) == getattr(jobs[2].cfg, k) for k in common)  # identical but for the core
    with pytest.raises(RLFError, match="set by --cores"):
        plan_jobs("tiny", ["core=mamba1"], ["forward"], ["mamba2"], [], 2)
    with pytest.raises(RLFError, match="protocols are"):
        plan_jobs("tiny", [], ["sideways"], ["mamba2"], [], 2)


# ----------------------------------------------------------------------------------------------- end to end

HEADLINE_ROWS = ["in-distribution trace accuracy (hops 1-2)", "halt precision", "OOD trace accuracy, 3 hops",
                 "OOD trace accuracy, 4 hops", "OOD trace accuracy, 4 hops, loop clock held at loop 4 (inference)",
                 "lifeline at 0: loop agreement", "lifeline at 0: trace accuracy",
                 "loop clock moved 3 loops ahead: in-distribution chains halting early",
                 "peak inference memory", "memory growth per loop", "steps to 99% val trace acc",
                 "training wall time", "examples/s (training)", "tokens/s (training)",
                 "base alone (tiny-llama", "the prompt as a chat user turn)", "no loop, mamba2 core once",
                 "no loop, transformer core once",
                 "in-distribution: forced trace accuracy", "ood: halt absorbing", "ood: answer unchanged",
                 "First <HALT> loop per hop count, mamba2", "First <HALT> loop per hop count, transformer",
                 "## Component ablations", "| lifeline=none |", "| main run (lifeline=vector",
                 "![per-hop accuracy](results_per_hop.png)", "- command: `rlf bench headline", "- versions: python",
                 "transformers", "- machine:"]


def test_quick_headline_end_to_end_and_resumes(tmp_path, capsys):
    out, docs = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # the encoding cache goes to ./cache
        argv = ["bench", "headline", "--quick", "--protocols", "forward", "--ablations", "lifeline=none",
                "--out", str(out), "--docs", str(docs)]
        assert main(argv) == 0
        assert "report:" in capsys.readouterr().out
        res = json.loads((out / "headline.json").read_text())
        md = docs.read_text()
        png = docs.parent / "results_per_hop.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for row in HEADLINE_ROWS:
            assert row in md, row
        proto = res["protocols"]["forward"]
        assert proto["same_eval_sets"] and proto["ood_hops"] == [3, 4] and set(proto["cores"]) == {"mamba2",
                                                                                                  "transformer"}
        for m in proto["cores"].values():
            ood = m["eval"]["splits"]["ood"]["conditions"]["intact"]["by_hops"]
            assert [ood[h]["trace_acc"]["n"] for h in ("3", "4")] == [6, 6]
            zero = m["eval"]["splits"]["in-distribution"]["conditions"]["zero"]["overall"]
            assert all_finite([m["training"]["examples_per_s"], m["training"]["tokens_per_s"],
                               m["memory"]["growth_mb_per_loop"], max(m["memory"]["peak_mb"]),
                               zero["loop_agreement"]["rate"],
                               m["stability"]["ood"]["overall"]["forced_trace_acc"]["rate"]])
            assert sum(sum(v["counts"].values()) for v in m["halt_histogram"].values()) == 4 * 6
            assert m["training"]["encode_cost_seconds"] >= 0  # known for both cores, though the second reuses
            clock = m["clock"]  # the loop clock moved ahead, on the same 12 in-distribution chains
            assert clock["offset"] == 3 and clock["early_halt"]["n"] == clock["trace_acc"]["n"] == 12
            held = m["clock_held"]  # the clock held at loop 4, on the same OOD chains
            assert held["clamp"] == 3 and [held["by_hops"][h]["n"] for h in ("3", "4")] == [6, 6]
            line = next(x for x in md.splitlines() if "4 hops, loop clock held at loop 4 (inference)" in x)
            assert f"| {fmt_rate(held['by_hops']['4'])} |" in line
            unseen = m["eval"]["splits"]["in-distribution"]["conditions"]["intact"]["by_answer"]["unseen"]
            assert unseen["n"] > 0 and f"| in-distribution trace accuracy, answer word never a training answer | " \
                   f"{fmt_rate(unseen['trace_acc'])}" in md
        alone = proto["baselines"]["base_alone"]  # the tiny tokenizer has a chat template: both formats measured
        no_loop = [b["answers"] for b in proto["baselines"]["no_loop"].values()]
        for answers in [alone["answers"], alone["chat_answers"], *no_loop]:
            assert answers["in-distribution"]["overall"]["n"] == 12 and all_finite(answers)
        assert set(res["ablations"]["rows"]) == {"lifeline=none",
                                                 "main run (lifeline=vector, loop_pos=rope, supervision=per_loop)"}
        assert res["command"].startswith("rlf bench headline --out")
        assert {"torch", "transformers", "rlf"} <= set(res["versions"])

        # rerun: every run and measurement is reused; nothing is trained again
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")}
        again = run_headline(out, protocols=["forward"], ablations="lifeline=none", docs=docs, quick=True,
                             progress=False)
        assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")} == stamps
        assert again["protocols"] == res["protocols"] and again["ablations"] == res["ablations"]

        # an interrupted main measurement resumes from its pieces: without the whole, nothing is evaluated again
        main_run = out / "mamba2-forward"
        assert {p.name for p in main_run.glob("headline_eval.*.json")} == {
            "headline_eval.evaluate.json", "headline_eval.stability-in-distribution.json",
            "headline_eval.stability-ood.json"}
        (main_run / "headline_eval.json").unlink()
        mp.setattr("rlf.headline.evaluate", lambda *a, **k: pytest.fail("evaluated again"))
        mp.setattr("rlf.headline.forced_tokens", lambda *a, **k: pytest.fail("forced loops run again"))
        resumed = run_headline(out, protocols=["forward"], ablations="lifeline=none", docs=docs, quick=True,
                               progress=False)
        assert resumed["protocols"] == res["protocols"]
