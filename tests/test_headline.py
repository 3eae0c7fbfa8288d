"""`rlf bench headline`: the measurements on hand-built cases, the no-loop option, the plan, and `--quick` end to
end: its committed parts, reused in a fresh process without training, rendered alone, stale when their key changes."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import rlf.headline
from rlf.cli import main
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.evaluate import eval_sets, evaluate, fmt_rate, rate
from rlf.headline import render_headline, run_headline
from rlf.headline.measure import (VERSIONS, base_answers, forced_tokens, halt_histogram, loop_one_answers,
                                  stability_outcomes, steps_to_accuracy, summarize_stability)
from rlf.headline.parts import load_parts, part_key, planned, read_part, write_part
from rlf.headline.plan import ABLATIONS, HeldOut, Job, parse_ablations, plan_jobs
from rlf.headline.render import steps_cell
from rlf.model import RLFModel
from rlf.tasks import generate
from rlf.train import Split, load_run, prepare_split, train, validate

from eval_helpers import all_finite, main_in, randomized_model

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


def test_steps_to_accuracy(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"step": 10, "loss": 1.0}, {"step": 50, "val_trace_acc": 0.5, "train_seconds": 5.0},
        {"step": 100, "val_trace_acc": 0.995, "train_seconds": 11.0}, {"step": 150, "val_trace_acc": 1.0}]) + "\n{cut")
    assert steps_to_accuracy(path) == {"threshold": 0.99, "step": 100, "train_seconds": 11.0}
    assert steps_to_accuracy(path, 1.01)["step"] is None
    assert steps_to_accuracy(tmp_path / "missing.jsonl")["step"] is None


def test_steps_cell_adds_the_encoding_cost_when_the_run_knows_it():
    def run(step, seconds, enc):
        return {"to_target": {"step": step, "train_seconds": seconds}, "encode_cost_seconds": enc}
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
    monkeypatch.setattr("rlf.headline.measure.LOGIT_BUDGET", 1)
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


class _IdsModel(_AnswerModel):
    """Answers with its prompts' first id at loop 1, as a feedback=pointer or readout=copy model reads them."""

    def forward(self, x, lengths, n_loops, prompt_ids=None):
        return torch.nn.functional.one_hot(prompt_ids[:, :1].expand(-1, n_loops), 11).float()


def test_no_loop_answers_pass_the_prompt_ids_a_pointer_model_reads():
    split = Split(examples=[None] * 3, encoded=_Encoded(3), target_ids=[[7], [3, 4], [3, 5]],
                  prompt_ids=[[7, 1, 2], [4, 1], [6]])
    assert loop_one_answers(_IdsModel(), split, batch_size=2).tolist() == [7, 4, 6]


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


def test_a_model_without_a_loop_position_gets_no_clock_parts():
    """The clock probe moves the loop position: a main model without one (loop_pos=none) has nothing to move."""
    rope, none = (Job("m", "main", "forward", "mamba2", "tiny", [f"loop_pos={p}"], 4, True) for p in ("rope", "none"))
    assert planned(rope, [1, 3]) == [("main", 1), ("main", 3), ("clock", 1), ("clock", 3), ("memory", None),
                                     ("training", None)]
    assert planned(none, [1, 3]) == [("main", 1), ("main", 3), ("memory", None), ("training", None)]


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
                     ["lifeline=none", "lifeline=vector", "loop_pos=learned max_loops=4"], 2, 5, False)
    names = [j.name for j in jobs]
    assert names[-2:] == ["base-alone-forward", "base-alone-backward"]
    assert [j.role for j in jobs[-2:]] == ["base_alone"] * 2 and jobs[-1].cfg.order == "backward"
    jobs, names = jobs[:-2], names[:-2]
    assert names[-1] == "mamba2-forward-loop_pos-learned+max_loops-4"
    assert (jobs[-1].cfg.loop_pos, jobs[-1].cfg.max_loops) == ("learned", 4)
    jobs, names = jobs[:-1], names[:-1]
    assert names[:4] == ["mamba2-forward", "mamba2-forward-noloop", "transformer-forward", "transformer-forward-noloop"]
    assert names[-2:] == ["mamba2-forward-lifeline-none", "mamba2-forward"]  # lifeline=vector is the main run
    assert jobs[-1].part_dir == "mamba2-forward-seed0" and all(j.n == 5 for j in jobs)
    back = jobs[4].cfg
    assert (back.order, back.distractors, back.core) == ("backward", 2, "mamba2")
    assert jobs[1].cfg.supervision == "answer_once"
    common = {"seed", "lr", "n_train", "hops", "max_steps", "batch_size", "order", "distractors", "data_seed"}
    assert all(getattr(jobs[0].cfg, k) == getattr(jobs[2].cfg, k) for k in common)  # identical but for the core
    assert (back.eval_distractors, jobs[0].cfg.eval_distractors) == (2, None)
    own = plan_jobs("pointer", [], ["backward"], ["transformer"], [], 3, 5, False)  # its own eval_distractors: 2
    assert [(j.cfg.distractors, j.cfg.eval_distractors) for j in own] == [("2-6", 3)] * 3  # main, no-loop, base
    with pytest.raises(RLFError, match="set by --cores"):
        plan_jobs("tiny", ["core=mamba1"], ["forward"], ["mamba2"], [], 2, 5, False)
    with pytest.raises(RLFError, match="protocols are"):
        plan_jobs("tiny", [], ["sideways"], ["mamba2"], [], 2, 5, False)


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
                 "![per-hop accuracy](results_per_hop.png)", "- commands that measured them: (1) `rlf bench headline",
                 "| `forward` mamba2 | `--preset tiny`", "| `forward` base alone |", "- parts: 36 current, 0 stale"]
QUICK = ["bench", "headline", "--quick", "--protocols", "forward", "--ablations", "lifeline=none"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `rlf bench headline --quick` run: its runs in ROOT/runs, its report and parts in ROOT/docs."""
    root = tmp_path_factory.mktemp("headline")
    main_in(root, [*QUICK, "--out", str(root / "runs"), "--docs", str(root / "docs" / "RESULTS.md")])
    return root


def _parts(docs) -> dict:
    return {p.relative_to(docs): p.read_bytes() for p in sorted((docs / "results").rglob("*.json"))}


def test_quick_headline_writes_its_parts_and_the_report_from_them(quick):
    docs = quick / "docs"
    md = (docs / "RESULTS.md").read_text()
    assert (docs / "results_per_hop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in HEADLINE_ROWS:
        assert row in md, row
    for core in ("mamba2", "transformer"):
        d = docs / "results" / f"{core}-forward-seed0"
        assert sorted(p.name for p in d.iterdir()) == [*(f"clock-0{h}hops.json" for h in range(1, 5)),
                                                       *(f"main-0{h}hops.json" for h in range(1, 5)), "memory.json",
                                                       "training.json"]
        ood = read_part(d / "main-04hops.json")["value"]["conditions"]
        assert list(ood) == ["intact"] and ood["intact"]["overall"]["trace_acc"]["n"] == 6  # gate = 0 in dist only
        main1 = read_part(d / "main-01hops.json")
        zero = main1["value"]["conditions"]["zero"]["overall"]
        assert all_finite([zero["loop_agreement"]["rate"], main1["value"]["stability"]["forced_trace_acc"]["rate"]])
        assert sum(main1["value"]["halt_histogram"]["counts"].values()) == 6
        assert main1["key"]["settings"] == {"ablations": {"zero": {"gate_scale": 0.0}}, "forced_factor": 2}
        assert main1["measured"]["weights"] == read_part(d / "clock-03hops.json")["measured"]["weights"]
        assert {"torch", "transformers", "rlf"} <= set(main1["measured"]["versions"])
        assert read_part(d / "clock-01hops.json")["key"]["settings"] == {"loop_offset": 3}  # moved ahead in dist
        held = read_part(d / "clock-04hops.json")  # held at loop 4 past it
        assert held["key"]["settings"] == {"loop_clamp": 3} and held["value"]["trace_acc"]["n"] == 6
        line = next(x for x in md.splitlines() if "4 hops, loop clock held at loop 4 (inference)" in x)
        assert f"| {fmt_rate(held['value']['trace_acc'])} |" in line
        training = read_part(d / "training.json")["value"]
        assert training["encode_cost_seconds"] >= 0 and all_finite([training["examples_per_s"],
                                                                     training["tokens_per_s"]])
    trace = [read_part(docs / "results" / "mamba2-forward-seed0" / f"main-0{h}hops.json")["value"]["conditions"]
             ["intact"]["overall"]["trace_acc"] for h in (1, 2)]  # in distribution: the two hop counts summed
    row = next(x for x in md.splitlines() if x.startswith("| in-distribution trace accuracy (hops 1-2) |"))
    assert row.split(" | ")[1] == fmt_rate(rate(trace[0]["k"] + trace[1]["k"], trace[0]["n"] + trace[1]["n"]))
    alone = read_part(docs / "results" / "base-alone-forward" / "base_alone-03hops.json")
    assert alone["key"]["seed"] is None and alone["measured"]["weights"] is None  # the tiny tokenizer has a chat
    assert alone["value"]["answers"]["n"] == alone["value"]["chat_answers"]["n"] == 6  # template: both formats
    # the held-out sets are those `rlf eval` makes for the run
    run_dir = quick / "runs" / "mamba2-forward"
    job = Job(**read_part(docs / "results" / "mamba2-forward-seed0" / "main-03hops.json")["job"])
    made = eval_sets(load_run(run_dir), run_dir, hops=[3], n=6)["ood"]
    assert [ex.prompt for ex in made] == [ex.prompt for ex in HeldOut().examples(job.cfg, 3, 6)]


def test_parts_alone_render_the_report_and_a_fresh_process_reuses_them_without_training(quick, tmp_path):
    """The report is rendered from the parts with no runs/ and no encodings present; a second `--quick` run in a fresh
    process finds every part committed with its key: it trains nothing, encodes nothing and rewrites no part."""
    docs = tmp_path / "docs"
    shutil.copytree(quick / "docs", docs)
    before = _parts(docs)
    (docs / "RESULTS.md").unlink()
    res = render_headline(docs / "RESULTS.md")
    assert (docs / "RESULTS.md").read_text() == (quick / "docs" / "RESULTS.md").read_text()
    assert all(not p.changed for p in res["parts"]) and len(res["parts"]) == 36
    proc = subprocess.run([sys.executable, "-m", "rlf.cli", *QUICK, "--out", str(tmp_path / "runs"),
                           "--docs", str(docs / "RESULTS.md")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("every part committed with its key; reused") == 6
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # no run trained, nothing encoded
    assert _parts(docs) == before
    assert (docs / "RESULTS.md").read_text() == (quick / "docs" / "RESULTS.md").read_text()


def test_a_changed_config_makes_its_parts_stale_and_retrained(quick, tmp_path, monkeypatch):
    """As if the preset had changed since the parts were measured: every trained model's part is stale, shown
    as such and kept out of the tables, and the next run trains again rather than reuse it; the base alone (which
    depends on the base and template only) stays."""
    docs = tmp_path / "docs"
    shutil.copytree(quick / "docs", docs)
    load = rlf.headline.plan.load_config
    monkeypatch.setattr("rlf.headline.plan.load_config",
                        lambda preset, overrides=(): load(preset, [*overrides, *(["lr=0.01"] if preset == "tiny"
                                                                                 else [])]))
    res = render_headline(docs / "RESULTS.md")
    stale = [p for p in res["parts"] if p.changed]
    assert len(stale) == 32 and {p.spec["role"] for p in stale} == {"main", "no_loop", "ablation"}
    assert all(p.changed == ["config"] for p in stale)
    md = (docs / "RESULTS.md").read_text()
    assert "- parts: 4 current, 32 stale" in md and "## Stale parts" in md
    assert "| `results/mamba2-forward-seed0/main-01hops.json` | `forward` main mamba2 | 1 |" in md
    assert "| lifeline at 0: loop agreement |" not in md and "| no loop, mamba2" not in md  # no column of stale parts
    assert "| base alone (tiny-llama" in md
    monkeypatch.setattr("rlf.headline.train_or_reuse", lambda *a, **k: pytest.fail("retrains"))
    with pytest.raises(pytest.fail.Exception, match="retrains"):
        run_headline(tmp_path / "runs", protocols=["forward"], ablations="lifeline=none", docs=docs / "RESULTS.md",
                     quick=True, progress=False)


def test_changed_measurement_code_makes_that_kind_stale(quick, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    shutil.copytree(quick / "docs", docs)
    monkeypatch.setitem(VERSIONS, "clock", VERSIONS["clock"] + 1)
    stale = [p for p in render_headline(docs / "RESULTS.md")["parts"] if p.changed]
    assert {(p.kind, tuple(p.changed)) for p in stale} == {("clock", ("code",))} and len(stale) == 8
    md = (docs / "RESULTS.md").read_text()  # the clock rows empty, the rest of the columns there
    assert "| loop clock moved 3 loops ahead: in-distribution chains halting early | — | — |" in md
    assert "| OOD trace accuracy, 3 hops, loop clock held at loop 4 (inference) | — | — |" in md
    assert "| OOD trace accuracy, 3 hops | 0.0% [0.0, 39.0] (0/6) |" in md


def test_a_job_measured_again_with_another_config_supersedes_its_older_parts(quick, tmp_path):
    """One hop count of a job measured again under another config (and later): the job's other parts are of a
    config it no longer has; they are stale, not mixed into its column."""
    docs = tmp_path / "docs"
    shutil.copytree(quick / "docs", docs)
    path = docs / "results" / "mamba2-forward-noloop-seed0" / "no_loop-03hops.json"
    old = read_part(path)
    job, heldout = Job(**{**old["job"], "overrides": [*old["job"]["overrides"], "lr=0.01"]}), HeldOut()
    write_part(path, job, "no_loop", 3, part_key(job, "no_loop", 3, heldout), old["value"],
               {**old["measured"], "date": "2099-01-01T00:00:00"})
    parts = {p.path.name: p for p in load_parts(docs / "results", heldout) if p.path.parent == path.parent}
    assert not parts["no_loop-03hops.json"].changed
    assert all(parts[f"no_loop-0{h}hops.json"].changed == ["config: the job was measured again later with another "
                                                           "config"] for h in (1, 2, 4))


def test_two_seeds_of_one_model_are_two_columns(quick, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(quick / "docs", docs)
    old = read_part(docs / "results" / "mamba2-forward-noloop-seed0" / "no_loop-03hops.json")
    job, heldout = Job(**{**old["job"], "overrides": [*old["job"]["overrides"], "seed=1"]}), HeldOut()
    write_part(docs / "results" / job.part_dir / "no_loop-03hops.json", job, "no_loop", 3,
               part_key(job, "no_loop", 3, heldout), old["value"], old["measured"])
    render_headline(docs / "RESULTS.md", heldout)
    md = (docs / "RESULTS.md").read_text()
    assert "| no loop, mamba2, seed 0 core once (answer-only target) | 0.0%" in md
    assert "| no loop, mamba2, seed 1 core once (answer-only target) | — | 0.0% [0.0, 39.0] (0/6) | — |" in md


def test_adding_a_hop_count_measures_only_that_hop_count(quick, tmp_path, monkeypatch):
    """The parts are per held-out hop count: asking for a 5-hop set later measures its parts and nothing else (the
    runs in --out are reused, not retrained), and the report shows the new column."""
    for d in ("runs", "docs", "cache"):
        shutil.copytree(quick / d, tmp_path / d)
    monkeypatch.chdir(tmp_path)
    before, weights = _parts(tmp_path / "docs"), {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/model.*")}
    measured, measure = [], rlf.headline.measure_part
    monkeypatch.setattr("rlf.headline.measure_part",
                        lambda kind, hops, *a: measured.append((kind, hops)) or measure(kind, hops, *a))
    run_headline(tmp_path / "runs", protocols=["forward"], ablations="lifeline=none", ood_hops="3,4,5",
                 docs=tmp_path / "docs" / "RESULTS.md", quick=True, progress=False)
    assert sorted(measured) == sorted([("main", 5), ("clock", 5)] * 2 + [("no_loop", 5)] * 2
                                      + [("ablation", 5), ("base_alone", 5)])
    after = _parts(tmp_path / "docs")
    assert {k: after[k] for k in before} == before and len(after) == len(before) + len(measured)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/model.*")} == weights
    assert "| OOD trace accuracy, 5 hops |" in (tmp_path / "docs" / "RESULTS.md").read_text()


def test_a_damaged_part_is_an_error_naming_the_file_and_field(quick, tmp_path, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(quick / "docs", docs)
    path = docs / "results" / "base-alone-forward" / "base_alone-01hops.json"
    data = json.loads(path.read_text())
    for edit, field in ((lambda d: d["job"].update(n="6"), "`job.n`: expected int, got str"),
                        (lambda d: d["measured"].pop("date"), "`measured.date` missing"),
                        (lambda d: d.update(hops=None), "`hops`: a base_alone part is measured per hop count")):
        broken = json.loads(json.dumps(data))
        edit(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(RLFError, match=f"{path}: field {field}"):
            render_headline(docs / "RESULTS.md")
    path.write_text("{cut")
    assert main(["bench", "headline", "--render", "--docs", str(docs / "RESULTS.md")]) == 2
    assert f"{path}: not a readable JSON result part" in capsys.readouterr().err
    assert main(["bench", "headline", "--render", "--docs", str(tmp_path / "empty" / "RESULTS.md")]) == 2
    assert "no result parts to render" in capsys.readouterr().err
