"""Phased training (`phases:`): each phase its data, supervision and optimisation; resume inside and across phases."""

import json

import pytest
import torch
from safetensors.torch import load_file

import rlf.train
from rlf.config import load_config
from rlf.errors import RLFError
from rlf.tasks import read_jsonl
from rlf.train import phase_at, phase_plan, train

PHASES = "phases=[{name: warm, steps: 4, overrides: {hops: '1', lr: 0.01, distractors: 0, n_train: 32}}, {name: main}]"


def two_phase(cache_dir, *extra):
    return load_config("tiny", ["max_steps=10", "n_train=64", "n_val=16", "batch_size=8", "val_every=5",
                                "ckpt_every=2", "log_every=1", "hops=1-3", "order=backward", "distractors=1",
                                f"cache_dir={cache_dir}", PHASES, *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama):
    cache = tmp_path_factory.mktemp("enc")
    run = tmp_path_factory.mktemp("ref") / "run"
    with torch.random.fork_rng():
        train(two_phase(cache), run, progress=False, base=tiny_llama)
    return run, cache


def test_a_two_phase_run_trains_each_phase_on_its_own_data_and_schedule(reference):
    run, _ = reference
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert [r["phase"] for r in recs] == ["warm"] * 4 + ["main"] * 6
    assert recs[0]["lr"] == pytest.approx(0.01 / 20)  # the warm phase's own lr, first of tiny's 20 warmup steps
    assert {ex.hops for ex in read_jsonl(run / "train.warm.jsonl")} == {1}
    warm = read_jsonl(run / "train.warm.jsonl")
    assert len(warm) == 32 and all(ex.meta["distractors"] == 0 for ex in warm)
    assert {ex.hops for ex in read_jsonl(run / "train.jsonl")} == {1, 2, 3}
    assert json.loads((run / "summary.json").read_text())["steps"] == 10


def test_killed_inside_phase_two_resumes_to_the_uninterrupted_weights(reference, tmp_path, tiny_llama, monkeypatch):
    ref, cache = reference
    run = tmp_path / "run"
    order = rlf.train.batch_order
    calls = {"n": 0}

    def dies_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # step 7 (0-based): inside `main`, after the checkpoint at step 6
            raise KeyboardInterrupt
        return order(*args, **kwargs)

    monkeypatch.setattr(rlf.train, "batch_order", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt), torch.random.fork_rng():
        train(two_phase(cache), run, progress=False, base=tiny_llama)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    monkeypatch.setattr(rlf.train, "batch_order", order)
    with torch.random.fork_rng():
        train(two_phase(cache), run, resume=True, progress=False, base=tiny_llama)
    a, b = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_goes_on_with_a_phase_added_when_forced(reference, tmp_path, tiny_llama):
    """--force with a longer schedule and one more phase (valid only together): the run continues into the new
    phase from its step 10, on data of its own made then, and without --force the change is refused, naming it."""
    import shutil

    ref, cache = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    more = ("phases=[{name: warm, steps: 4, overrides: {hops: '1', lr: 0.01, distractors: 0, n_train: 32}}, "
            "{name: main, steps: 6}, {name: more, overrides: {lr: 0.001, distractors: 0, n_train: 16}}]")
    cfg = two_phase(cache, "max_steps=12", more)
    with pytest.raises(RLFError, match="config differs from the one the run started with \\(phases"):
        train(cfg, run, resume=True, progress=False, base=tiny_llama)
    train(cfg, run, resume=True, force=True, progress=False, base=tiny_llama)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows if "loss" in r][-3:] == ["main", "more", "more"]
    more_data = read_jsonl(run / "train.more.jsonl")
    assert len(more_data) == 16 and all(ex.meta["distractors"] == 0 for ex in more_data)


def test_a_finished_phase_is_not_rerun(reference, tmp_path, tiny_llama, monkeypatch):
    """Resuming at step 6 (inside `main`) never draws a batch of `warm` again."""
    import shutil

    ref, cache = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10
    seen = []
    order = rlf.train.batch_order
    monkeypatch.setattr(rlf.train, "batch_order",
                        lambda sizes, *a, **k: seen.append(len(sizes)) or order(sizes, *a, **k))
    train(two_phase(cache, "max_steps=12"), run, resume=True, progress=False, base=tiny_llama)
    assert len(seen) == 2 and set(seen) == {64}  # only main's data (64 examples; warm has 32), steps 10 and 11


def test_phase_plan_spans_and_overrides():
    plan = phase_plan(load_config("tiny", ["max_steps=10", PHASES]))
    assert [(p.name, p.start, p.end, p.own_data) for p in plan] == [("warm", 0, 4, True), ("main", 4, 10, False)]
    assert plan[0].cfg.hops == "1" and plan[0].cfg.lr == 0.01 and plan[0].cfg.max_steps == 4
    assert plan[1].cfg.lr == load_config("tiny").lr
    assert phase_at(plan, 3).name == "warm" and phase_at(plan, 4).name == "main"
    assert [p.name for p in phase_plan(load_config("tiny"))] == ["main"]


def test_a_phase_cut_short_of_its_cosine_keeps_the_longer_schedules_rates():
    """decay_steps: a 700-step phase on an 1,800-step cosine trains at the rates of the first 700 steps of an
    1,800-step phase (what a run stopped inside a phase and resumed with the phase ended there trained at)."""
    cut = "phases=[{name: a, steps: 700, overrides: {lr: 0.002, decay_steps: 1800}}, {name: b}]"
    full = "phases=[{name: a, steps: 1800, overrides: {lr: 0.002}}, {name: b}]"
    a_cut, a_full = phase_plan(load_config("tiny", ["max_steps=2500", cut]))[0], \
        phase_plan(load_config("tiny", ["max_steps=2500", full]))[0]
    rates = [rlf.train.lr_at(s, a_cut.cfg) for s in range(700)]
    assert rates == [rlf.train.lr_at(s, a_full.cfg) for s in range(700)]
    assert 0.0014 < rates[-1] < 0.0015  # not decayed to 10% (0.0002) at the phase's end
    assert rlf.train.lr_at(5000, a_cut.cfg) == pytest.approx(0.0002)  # past the cosine: 10% of lr


@pytest.mark.parametrize("phases, message", [
    ("[{name: a, steps: 4, overrides: {core: transformer}}, {name: b}]", "phase 'a': key 'core' cannot change"),
    ("[{name: a, steps: 4, overrides: {bogus: 1}}, {name: b}]", "phase 'a': key 'bogus'"),
    ("[{name: a, steps: 0}, {name: b}]", "phase 'a': steps=0"),
    ("[{name: a, steps: 4}, {name: a}]", "phase 'a': duplicate phase name"),
    ("[{name: a, steps: 4}, {name: b, steps: 3}]", "add up to 7, max_steps is 10"),
    ("[{name: a, steps: 10}, {name: b}]", "phase 'b': steps=0"),
    ("[{name: a, steps: 4, overrides: {lr: fast}}, {name: b}]", "phase 'a': lr='fast'"),
    ("[{steps: 4}]", "phases\\[0\\]: each phase is a mapping with a `name`"),
])
def test_an_invalid_phase_is_refused_naming_the_phase_and_key(phases, message):
    with pytest.raises(RLFError, match=message):
        load_config("tiny", ["max_steps=10", f"phases={phases}"])


def test_copy_warmup_supervises_each_sampled_position_with_its_own_token(tiny_llama):
    """supervision=copy: the head at k sampled positions after one loop, targets = those positions' tokens; the loss
    is exactly the cross-entropy of those rows (so a wrong position or target would show)."""
    import torch.nn.functional as F

    from rlf.model import copy_loss
    from rlf.train import build_model

    model = build_model(load_config("tiny"), tiny_llama)
    prompts = ["K = moon. P = K. What is P?\nAnswer:", "A = sun. What is A?\nAnswer:"]
    ids = tiny_llama.tokenize(prompts)
    x, lengths = tiny_llama.encode_ids(ids)
    flat, starts = torch.tensor(ids[0] + ids[1]), torch.tensor([0, len(ids[0])])
    uniform = torch.rand(2, 5, generator=torch.Generator().manual_seed(0))
    loss, stats = copy_loss(model, x, lengths, flat, starts, uniform)
    pos = (uniform * lengths[:, None].float()).long()
    assert (pos < lengths[:, None]).all() and len(ids[1]) < len(ids[0])  # never a padding position
    state = model.step(x, x, 0)
    logits = model.head(state[torch.arange(2)[:, None], pos])
    want = torch.tensor([[ids[b][j] for j in pos[b].tolist()] for b in range(2)])
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(10, -1), want.reshape(-1)))
    assert stats["n"] == 10 and stats["loop_hits"] == [int((logits.argmax(-1) == want).sum())]
    loss.backward()
    assert model.core.mixer.out_proj.weight.grad.abs().max() > 0  # the core learns from it (tiny: a Mamba2 core)


def warmup_then_task(tmp_path, base, supervision: str, steps: int):
    """Train `steps` of a warm-up phase then as many of the task (tiny, backward chains); check the phase log;
    return the config, the metrics rows and the run's first batch of examples."""
    cfg = load_config("tiny", [f"max_steps={2 * steps}", "log_every=1", f"val_every={2 * steps}", "order=backward",
                               "distractors=1",
                               f"phases=[{{name: warm, steps: {steps}, overrides: {{supervision: {supervision}}}}}, "
                               "{name: main}]"])
    train(cfg, tmp_path / "run", progress=False, base=base)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in rows if "loss" in r] == ["warm"] * steps + ["main"] * steps
    examples = read_jsonl(tmp_path / "run" / "train.jsonl")
    idx = rlf.train.batch_order([len(ex.targets) for ex in examples], cfg.batch_size, cfg.seed, 0)
    return cfg, rows, [examples[i] for i in idx]


@pytest.mark.parametrize("warmup", ["copy", "lookup", "chains"])
def test_a_warmup_is_refused_for_a_whole_run(tmp_path, tiny_llama, warmup):
    with pytest.raises(RLFError, match=f"supervision={warmup} is a warm-up"):
        train(load_config("tiny", [f"supervision={warmup}"]), tmp_path / "run", progress=False, base=tiny_llama)


def test_chain_lookups_are_the_references_to_names_already_assigned():
    from rlf.tasks.chain import chain_queries

    text = "CJ = IB. ML = CJ. IB = NT. OF = ML. What is OF?\nAnswer:"
    found = chain_queries(text)
    # ML's value CJ was assigned before (-> IB), IB's reference NT comes before NT is assigned: none; ML -> CJ; OF -> ML
    assert [(text[:end].rsplit(" ", 1)[-1], chain[0]) for end, chain, _ in found] == [("CJ", "IB"), ("ML", "CJ"),
                                                                                      ("OF", "ML")]
    assert chain_queries("A = sun. What is B?") == []
    with pytest.raises(RLFError, match="assigns 'A' twice"):
        chain_queries("A = sun. A = moon. What is A?")


def test_chain_queries_follow_each_reference_through_the_statements_before_it():
    from rlf.tasks.chain import chain_queries

    text = "CJ = IB. ML = CJ. IB = NT. OF = ML. NT = sun. What is OF?"
    found = [(text[:end].rsplit(" ", 1)[-1], chain, done) for end, chain, done in chain_queries(text)]
    # at "ML = CJ" CJ -> IB, and IB is assigned only later: an open chain; at "OF = ML" the chain is ML -> CJ -> IB
    # -> NT (NT assigned later: open); the question sees every statement: its chain is the task's trace, complete
    assert found == [("CJ", ["IB"], False), ("ML", ["CJ", "IB", "NT"], False),
                     ("OF", ["ML", "CJ", "IB", "NT", "sun"], True)]


def test_a_chains_phase_loops_each_reference_as_the_end_of_its_prompt(tmp_path, tiny_llama):
    """supervision=chains: each reference is a query, its prompt cut after it and looped as the task is; a complete
    chain ends in <HALT>, an open one is not supervised past its last known step; the phase's first loss is that of
    the task's own forward on the cut prompts, recomputed from the same initial weights."""
    from rlf.model import IGNORE, chain_loss, loop_loss
    from rlf.train import build_model, chain_batch, reference_chains

    cfg, rows, batch = warmup_then_task(tmp_path, tiny_llama, "chains", 3)
    found = reference_chains(batch, tiny_llama.tokenizer, cfg.template, "warm", "chains")
    model = build_model(cfg, tiny_llama)
    r, pos, targets = chain_batch(found, model.halt_id)
    chains = [c for _, cs, _ in found for c in cs]
    complete = torch.cat([d for _, _, d in found])
    for j, chain in enumerate(chains):
        assert targets[j, : len(chain)].tolist() == chain
        assert targets[j, len(chain)] == (model.halt_id if complete[j] else IGNORE)
    # every question's chain is complete and is the example's own trace
    last = [len(p) - 1 for p, _, _ in found]
    assert [chains[sum(len(p) for p, _, _ in found[:b]) + last[b]] for b in range(len(batch))] == \
        [rlf.train.target_ids_of([ex], tiny_llama.tokenizer, "t")[0] for ex in batch]
    x, lengths = tiny_llama.encode_ids(tiny_llama.tokenize([cfg.template.replace("{prompt}", ex.prompt) for ex in batch]))
    loss, _ = chain_loss(model, x, r, pos, targets)
    ids = tiny_llama.tokenize([cfg.template.replace("{prompt}", ex.prompt) for ex in batch])
    cut = [tiny_llama.encode_ids([ids[b][: p + 1]])[0][0] for b, p in zip(r.tolist(), pos.tolist())]
    width = max(len(c) for c in cut)
    xs = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, width - len(c))) for c in cut])
    expect, _ = loop_loss(model(xs, pos + 1, targets.shape[1]), targets)
    torch.testing.assert_close(loss, expect, rtol=1e-4, atol=1e-5)
    assert rows[0]["loss"] == pytest.approx(loss.item(), rel=1e-4)


def test_lookup_warmup_targets_the_token_of_each_reference(tiny_llama):
    """supervision=lookup: the pairs point at the last token of each reference, with the assigned word's target id;
    a phase trains on them (loss falls on a tiny base) and a prompt that poses no lookup is refused by name."""
    from rlf.tasks import Example, target_token_id
    from rlf.train import lookup_pairs

    tok = tiny_llama.tokenizer
    ex = Example(id="e1", task="chain", prompt="K = moon. P = K. Q = P. What is Q?", targets=["P", "K", "moon"],
                 answer="moon", hops=2)
    [(pos, ids)] = lookup_pairs([ex], tok, "{prompt}\nAnswer:", "warm")
    pieces = tok.convert_ids_to_tokens(tok("K = moon. P = K. Q = P. What is Q?\nAnswer:")["input_ids"])
    assert [pieces[p].lstrip("Ġ") for p in pos.tolist()] == ["K", "P", "Q"]
    assert ids.tolist() == [target_token_id(tok, w) for w in ("moon", "K", "P")]
    bad = Example(id="e2", task="chain", prompt="K = moon. What is Z?", targets=["moon"], answer="moon", hops=0)
    with pytest.raises(RLFError, match=r"phase warm: supervision=lookup: example 1 \(id e2\) poses no lookup"):
        lookup_pairs([bad], tok, "{prompt}", "warm")


def test_a_lookup_phase_trains_on_exactly_those_pairs(tmp_path, tiny_llama):
    """A lookup phase then the task: the phase's loss is the cross-entropy of the head at its pairs after one loop
    (the run's first step, recomputed from the same initial weights), and the task phase follows it."""
    import torch.nn.functional as F

    from rlf.model import position_loss
    from rlf.train import build_model, lookup_pairs

    cfg, rows, batch = warmup_then_task(tmp_path, tiny_llama, "lookup", 4)
    pairs = lookup_pairs(batch, tiny_llama.tokenizer, cfg.template, "warm")
    x, lengths = tiny_llama.encode_ids(tiny_llama.tokenize([cfg.template.replace("{prompt}", ex.prompt) for ex in batch]))
    r = torch.cat([torch.full((len(p),), b) for b, (p, _) in enumerate(pairs)])
    pos, ids = torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs])
    model = build_model(cfg, tiny_llama)
    loss, stats = position_loss(model, x, lengths, r, pos, ids)
    logits = model.head(model.step(*model._start(x, lengths)[:1], x, 0)[r, pos])
    torch.testing.assert_close(loss, F.cross_entropy(logits, ids))
    assert stats["n"] == len(ids) >= len(batch)  # every backward chain poses its question's lookup at least
    assert rows[0]["loss"] == pytest.approx(loss.item(), rel=1e-4)


def test_the_seeds_schedule_preset_is_the_larger_seeds_three_phases_on_its_design():
    cfg, design = load_config("seeds-1.4b"), load_config("gpu-mamba-1.4b")
    plan = phase_plan(cfg)
    assert [(ph.name, ph.start) for ph in plan] == [("3a", 0), ("3b", 2000), ("3c", 10000)] and cfg.max_steps == 11000
    assert plan[0].cfg.supervision == "copy" and plan[1].cfg.supervision == "per_loop"
    assert plan[2].cfg.lr == cfg.lr / 10 and cfg.early_stop_patience == 0  # an early stop would skip the recovery
    same = ("base", "encoder_layers", "core", "scratchpad", "bridge_rank", "task", "order", "hops", "n_train", "bf16")
    assert {k: getattr(cfg, k) for k in same} == {k: getattr(design, k) for k in same}
