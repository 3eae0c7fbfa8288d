"""Tests for rlf.tasks: the JSONL format and its validation, every generator (checked by resolvers
written independently of them), the bAbI and Coconut readers, splits, and `rlf data`."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlf.cli import main
from rlf.errors import RLFError
from rlf.tasks import (
    Example,
    check_jsonl,
    default_ood_hops,
    generate,
    make_adversarial,
    make_splits,
    parse_hops,
    read_babi,
    read_coconut,
    read_jsonl,
    split_examples,
    target_token_id,
    write_jsonl,
)
from rlf.tasks.suite import TASKS

from eval_helpers import shortest_path

BABI_DIR = Path(os.environ.get("RLF_BABI_DIR", Path(__file__).resolve().parents[2] / "shared/data/babi"))
needs_babi = pytest.mark.skipif(not (BABI_DIR / "en-10k").is_dir(), reason=f"no bAbI data at {BABI_DIR}")


@pytest.fixture(scope="module")
def tok():
    from rlf.base import load_tokenizer

    return load_tokenizer("smollm2-135m")


# ---------------------------------------------------------------------------------------------
# Independent resolvers: they read only the prompt text, never the generators' code or meta.

SENTENCE = re.compile(r"(?<=[.?!])\s+")
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {
    w: 10 * i for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split(), 3)
}


def sentences(prompt: str) -> tuple[list[str], str]:
    parts = SENTENCE.split(prompt)
    return parts[:-1], parts[-1]


def resolve_chain(prompt: str, order: str) -> tuple[list[str], list[str]]:
    """(expected targets, assignment statements) by dereferencing `X = Y.` from the queried variable."""
    body, question = sentences(prompt)
    assigned: dict[str, str] = {}
    statements = []
    for s in body:
        m = re.fullmatch(r"([A-Z]{1,2}) = (\w+)\.", s)
        if m:
            assert m.group(1) not in assigned, f"{m.group(1)} assigned twice in {prompt!r}"
            assigned[m.group(1)] = m.group(2)
            statements.append(s)
    query = re.fullmatch(r"What is ([A-Z]{1,2})\?", question).group(1)
    walk = [query]
    while walk[-1] in assigned:
        walk.append(assigned[walk[-1]])
    pointers, value = walk[1:-1], walk[-1]
    assert value.islower(), f"chain of {query} does not end in a value: {walk}"
    return (pointers[::-1] if order == "forward" else pointers) + [value], statements


def resolve_graph(prompt: str) -> tuple[list[str], str]:
    """(expected targets, the answer) by BFS over `N is a X.` / `Every X is a Y.` from the question's subject."""
    body, question = sentences(prompt)
    edges: dict[str, list[str]] = {}
    for s in body:
        m = re.fullmatch(r"(?:Every )?(\w+) is an? (\w+)\.", s)
        if m:
            edges.setdefault(m.group(1), []).append(m.group(2))
    m = re.fullmatch(r"Is (\w+) an? (\w+) or an? (\w+)\?", question)
    subject, options = m.group(1), [m.group(2), m.group(3)]
    return shortest_path(edges, subject, options)


def evaluate_program(prompt: str) -> tuple[dict[str, int], str]:
    """Values of `X = expr.` statements over number words (math, bugfix after its patch), and the query."""
    body, question = sentences(prompt)
    env: dict[str, object] = {}
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    words = {"plus": "+", "minus": "-", "times": "*"}
    for s in body:
        m = re.fullmatch(r"(\w+) = (\w+)(?: (\S+) (\w+))?\.", s)
        if not m:
            continue
        name, a, op, b = m.groups()
        if name in ("op", "fix"):
            env[name] = words[a]
            continue
        if s == "Replace op with fix.":
            continue
        value = lambda t: env[t] if t in env else NUMBERS[t]  # noqa: E731
        if op is None:
            env[name] = value(a)
        else:
            op = env["fix"] if op == "op" else words.get(op, op)
            env[name] = ops[op](value(a), value(b))
    assert "Replace op with fix." in body or "op" not in env
    return env, re.fullmatch(r"What is (\w+)\?", question).group(1)


# ---------------------------------------------------------------------------------------------
# Generators


def test_same_seed_same_bytes_for_every_task(tok, tmp_path):
    for task in TASKS:
        a, b, c = (tmp_path / f"{task}-{i}.jsonl" for i in range(3))
        write_jsonl(generate(task, 200, [1, 2, 3], 7, tok, adversarial=1), a)
        write_jsonl(generate(task, 200, [1, 2, 3], 7, tok, adversarial=1), b)
        write_jsonl(generate(task, 200, [1, 2, 3], 8, tok, adversarial=1), c)
        assert a.read_bytes() == b.read_bytes(), task
        assert a.read_bytes() != c.read_bytes(), task


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_chain_targets_match_an_independent_resolver(tok, order):
    examples = generate("chain", 600, [1, 2, 3, 5, 8, 16, 32], 1, tok, order=order, distractors=2)
    examples += generate("chain", 100, [1, 4, 32], 2, tok, order=order, distractors=3, adversarial=4)
    for ex in examples:
        targets, statements = resolve_chain(ex.prompt, order)
        assert ex.targets == targets and ex.answer == targets[-1]
        assert len(ex.targets) == ex.hops + 1
        values = [s for s in statements if re.fullmatch(r"\w+ = [a-z]\w*\.", s)]
        assert len(values) == ex.meta["distractors"] + 1  # one value per chain: the distractor chains are there


def test_a_distractor_range_draws_each_examples_count_and_one_count_is_the_integer_option(tok):
    mixed = generate("chain", 300, [2, 5], 4, tok, order="backward", distractors="1-3,6")
    assert {ex.meta["distractors"] for ex in mixed} == {1, 2, 3, 6}
    for ex in mixed:  # the distractor chains are really there: one value per chain
        _, statements = resolve_chain(ex.prompt, "backward")
        assert len([s for s in statements if re.fullmatch(r"\w+ = [a-z]\w*\.", s)]) == ex.meta["distractors"] + 1
    assert generate("chain", 50, [1, 3], 4, tok, distractors="2") == generate("chain", 50, [1, 3], 4, tok, distractors=2)
    with pytest.raises(RLFError, match=re.escape("chain: distractors '4-2'")):
        generate("chain", 5, [1], 0, tok, distractors="4-2")


def test_eval_distractors_set_the_held_out_sets_memory_and_leave_training_unchanged(tok):
    from rlf.config import TrainConfig
    from rlf.evaluate import heldout_examples

    mixed = TrainConfig(order="backward", distractors="2-6")
    protocol = TrainConfig(order="backward", distractors="2-6", eval_distractors=2)
    assert {ex.meta["distractors"] for ex in heldout_examples(mixed, tok, [3, 7], 100)} == {2, 3, 4, 5, 6}
    held_out = heldout_examples(protocol, tok, [3, 7], 100)
    assert {ex.meta["distractors"] for ex in held_out} == {2}
    assert held_out == heldout_examples(TrainConfig(order="backward", distractors=2), tok, [3, 7], 100)
    assert protocol.digest() == mixed.digest()  # what is trained is the same: cached runs and parts stay valid
    with pytest.raises(RLFError, match="eval_distractors=-1: must be 0 or more"):
        TrainConfig(eval_distractors=-1)
    with pytest.raises(RLFError, match="eval_distractors"):
        TrainConfig(eval_distractors="6-2")
    with pytest.raises(RLFError, match="task='graph' has none"):
        TrainConfig(task="graph", eval_distractors=2)


def test_forward_chains_are_in_chain_order_and_backward_chains_need_dereferencing(tok):
    def chain_positions(ex):
        _, statements = resolve_chain(ex.prompt, ex.meta["order"])
        position = {s.split(" = ")[0]: i for i, s in enumerate(statements)}
        head_first = ex.targets[:-1] if ex.meta["order"] == "forward" else ex.targets[-2::-1]
        query = re.search(r"What is (\w+)\?", ex.prompt).group(1)
        return [position[v] for v in [*head_first, query]], position[query] == len(statements) - 1

    forward = [chain_positions(ex) for ex in generate("chain", 300, [3, 4, 5], 3, tok, order="forward", distractors=2)]
    assert all(p == sorted(p) for p, _ in forward)
    backward = [chain_positions(ex) for ex in generate("chain", 300, [3, 4, 5], 3, tok, order="backward", distractors=2)]
    in_order = sum(p == sorted(p) for p, _ in backward)
    query_last = sum(last for _, last in backward)
    assert in_order < 0.1 * len(backward), f"{in_order} of {len(backward)} backward chains are in chain order"
    assert query_last < 0.25 * len(backward), f"the queried variable is the last statement in {query_last} chains"


def test_graph_targets_match_an_independent_resolver(tok):
    examples = generate("graph", 300, [1, 2, 3, 4, 5, 6, 10], 4, tok) + generate(
        "graph", 60, [3, 6, 32], 5, tok, distractors=10, adversarial=3
    )
    for ex in examples:
        targets, answer = resolve_graph(ex.prompt)
        assert ex.targets == targets and ex.answer == answer
        assert len(ex.targets) == ex.hops + 1
        assert ex.meta["neg"] in ex.prompt.split("?")[0].split("Is ")[-1]


def test_math_and_bugfix_values_match_an_evaluator(tok):
    for ex in generate("math", 300, [1, 2, 3, 6, 12], 6, tok, distractors=2):
        env, query = evaluate_program(ex.prompt)
        assert NUMBERS[ex.answer] == env[query]
        assert [NUMBERS[t] for t in ex.targets] == _walk_values(ex.prompt, env, query)
    for ex in generate("bugfix", 300, [1, 2, 3, 6, 12], 6, tok):
        env, query = evaluate_program(ex.prompt)
        assert NUMBERS[ex.answer] == env[query]
        assert ex.targets[0] in ("plus", "minus", "times") and f"fix = {ex.targets[0]}." in ex.prompt
        assert " op " in ex.prompt.split("fix = ")[1], "at least one step uses the patched operator"


def _walk_values(prompt: str, env: dict, query: str) -> list[int]:
    """Values along the chain of variables that leads to the query (start value first)."""
    defs = dict(re.findall(r"(\w+) = (\w+) [-+*] \w+\.", prompt))
    walk = [query]
    while walk[-1] in defs:
        walk.append(defs[walk[-1]])
    return [env[v] for v in reversed(walk)]


def test_sequence_and_override_targets(tok):
    for ex in generate("sequence", 200, [1, 2, 3, 5, 10], 7, tok):
        terms = re.findall(r"(\w+?)(\d+) = (?:\w+?\d+ ([-+*]) )?(\w+)\.", ex.prompt)
        start, (_, _, op, step) = NUMBERS[terms[0][3]], terms[1]
        values = [start]
        for _ in range(2 + ex.hops):
            values.append(eval(f"{values[-1]} {op} {NUMBERS[step]}"))
        assert [NUMBERS[t] for t in ex.targets] == values[2:]
        assert ex.prompt.endswith(f"What is {terms[0][0]}{3 + ex.hops}?")
    for ex in generate("override", 200, [1, 2, 3, 8], 7, tok, distractors=2):
        body, question = sentences(ex.prompt)
        person = re.search(r"did (\w+) ", question).group(1)
        acted = {}
        for s in body:
            if m := re.fullmatch(r"(\w+) \w+ what (\w+) \w+\.", s):
                acted[m.group(1)] = m.group(2)
            elif m := re.fullmatch(r"([A-Z]\w+) (?:touched|tasted|saw) (\w+)\.", s):
                acted[m.group(1)] = m.group(2)
        walk = [person]
        while walk[-1] in acted:
            walk.append(acted[walk[-1]])
        obj = walk[-1]
        prop = re.search(rf"(?:^|\. ){obj} is (\w+)\.", ex.prompt).group(1)
        assert ex.targets == [*walk[1:], prop]
        assert prop != ex.meta["prior"]  # counterfactual


def test_every_target_is_one_token_and_files_load(tok, tmp_path):
    for task in TASKS:
        hops = [1, 2, 3, 8] if task == "sequence" else [1, 2, 3, 8, 32]
        examples = generate(task, 300, hops, 9, tok, adversarial=2)
        path = tmp_path / f"{task}.jsonl"
        write_jsonl(examples, path)
        assert read_jsonl(path, tok) == examples
        keys = {tuple(json.loads(line)["meta"]) for line in path.read_text().splitlines()}
        assert len(keys) == 1, f"{task}: meta keys differ between lines, which breaks datasets' schema"
        assert all(len(ex.targets) == ex.hops + 1 and not ex.prompt.endswith("Answer:") for ex in examples)
        assert len({ex.prompt for ex in examples}) == len(examples)
    assert target_token_id(tok, "moon") == tok(" moon", add_special_tokens=False)["input_ids"][0]


def test_adversarial_noise_keeps_the_question_last_and_the_answer(tok):
    plain = generate("chain", 50, [3], 11, tok)
    noisy = generate("chain", 50, [3], 11, tok, adversarial=5)
    for ex in noisy:
        body, question = sentences(ex.prompt)
        assert question.startswith("What is") and len(body) == 4 + 5
        assert resolve_chain(ex.prompt, "backward")[0] == ex.targets
    assert [ex.prompt for ex in plain] != [ex.prompt for ex in noisy]
    again = make_adversarial(plain, 3, 0, tok)
    assert [ex.targets for ex in again] == [ex.targets for ex in plain]
    assert all(len(sentences(a.prompt)[0]) == len(sentences(p.prompt)[0]) + 3 for a, p in zip(again, plain))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    task=st.sampled_from(sorted(TASKS)),
    hops=st.lists(st.integers(1, 24), min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
    distractors=st.integers(0, 5),
    adversarial=st.integers(0, 4),
    order=st.sampled_from(["forward", "backward"]),
    balanced=st.booleans(),
)
def test_property_generators_are_valid_for_any_options(tok, task, hops, seed, distractors, adversarial, order, balanced):
    if task == "sequence":
        hops = [min(h, 18) for h in hops]
    options = {"chain": {"order": order, "distractors": distractors}, "graph": {"distractors": distractors}}
    options |= {"math": {"distractors": distractors}, "override": {"distractors": min(distractors, 3)}}
    kw = dict(balanced=balanced, adversarial=adversarial, **options.get(task, {}))
    examples = generate(task, 12, hops, seed, tok, **kw)
    assert examples == generate(task, 12, hops, seed, tok, **kw)
    assert len(examples) == 12 and {ex.hops for ex in examples} <= set(hops)
    if balanced:
        counts = Counter(ex.hops for ex in examples)
        assert max(counts.values()) - min(counts.get(h, 0) for h in set(hops)) <= 1
    encoded = tok([" " + t for ex in examples for t in ex.targets], add_special_tokens=False)["input_ids"]
    assert all(len(ids) == 1 for ids in encoded)
    for ex in examples:
        assert ex.answer == ex.targets[-1] and len(ex.targets) == ex.hops + 1
        if task == "chain":
            assert resolve_chain(ex.prompt, order)[0] == ex.targets
        if task == "graph":
            assert resolve_graph(ex.prompt)[0] == ex.targets


def test_generate_rejects_bad_options(tok):
    cases = [
        (dict(task="chains"), "unknown task 'chains'; generated tasks are: chain, math"),
        (dict(task="babi"), "read from files, not generated: use rlf.tasks.read_babi"),
        (dict(colour="red"), "chain: unknown option colour; its options are: order, distractors"),
        (dict(n=0), "chain: option n=0 must be an integer >= 1"),
        (dict(hops=[]), "hops must be a non-empty list of integers between 1 and 1000"),
        (dict(hops=[0]), "hops must be a non-empty list"),
        (dict(order="sideways"), "chain: option order='sideways' must be one of forward, backward"),
        (dict(distractors=-1), "chain: option distractors=-1 must be an integer >= 0"),
        (dict(hops=[300], distractors=1), "chain: needs"),
        (dict(seed="x"), "seed must be an integer"),
        (dict(adversarial=-2), "option adversarial=-2 must be an integer >= 0"),
    ]
    for change, message in cases:
        kw = dict(task="chain", n=5, hops=[1], seed=0, tokenizer=tok) | change
        with pytest.raises(RLFError, match=re.escape(message)):
            generate(**kw)
    with pytest.raises(RLFError, match="the most hops it allows is 18"):
        generate("sequence", 5, [19], 0, tok)
    with pytest.raises(RLFError, match=r"found only \d+ distinct prompts of the 5000 asked for"):
        generate("sequence", 5000, [18], 0, tok)
    assert len(generate("sequence", 500, [18], 0, tok, unique=False)) == 500


def test_parse_hops():
    assert parse_hops("1-5,8") == [1, 2, 3, 4, 5, 8]
    assert parse_hops(" 3 , 1-2,2") == [1, 2, 3]
    assert parse_hops("32") == [32]
    for text, reason in [
        ("", "'' is not a number or a range"),
        ("5-1", "range '5-1' goes down: 5 > 1"),
        ("a", "'a' is not a number or a range"),
        ("1,,2", "'' is not a number or a range"),
        ("-3", "'-3' is not a number or a range"),
        ("1-", "'1-' is not a number or a range"),
        ("0", "'0' is outside 1-1000"),
        ("1-2000", "'1-2000' is outside 1-1000"),
        ("1.5", "'1.5' is not a number or a range"),
    ]:
        with pytest.raises(RLFError, match=re.escape(f"hops {text!r}: write numbers and ranges like 1-5,8 ({reason})")):
            parse_hops(text)


# ---------------------------------------------------------------------------------------------
# The JSONL format: every bad input gets its message


GOOD = {"id": "x", "task": "chain", "prompt": "A = moon. What is A?", "targets": ["moon"], "answer": "moon", "hops": 0}


def _line(**change) -> str:
    obj = {k: v for k, v in (GOOD | change).items() if v is not ...}
    return json.dumps(obj)


BAD_LINES = [
    ("", "blank line"),
    ("   ", "blank line"),
    ("{not json", "not JSON: Expecting property name enclosed in double quotes at column 2"),
    ('["a"]', "not a JSON object but a list"),
    (_line(prompt="A = moon\u0000"), "field 'prompt': contains a NUL character (\\u0000)"),
    (_line(targets=["mo\u0000on"], answer="mo\u0000on"), "field 'targets[0]': contains a NUL character"),
    (_line(id=...), "field 'id': missing"),
    (_line(targets=...), "field 'targets': missing"),
    (_line(hops="3"), "field 'hops': must be an integer, not a string"),
    (_line(hops=True), "field 'hops': must be an integer, not a boolean"),
    (_line(hops=-1), "field 'hops': must be >= 0, not -1"),
    (_line(targets="moon"), "field 'targets': must be a list, not a string"),
    (_line(meta=[]), "field 'meta': must be an object, not a list"),
    (_line(answer=None), "field 'answer': must be a string, not null"),
    (_line(colour="red"), "field 'colour': unknown field (the fields are: id, task, prompt, targets, answer, hops, meta)"),
    (_line(prompt=" "), "field 'prompt': is empty"),
    (_line(id=""), "field 'id': is empty"),
    (_line(targets=[], answer="moon"), "field 'targets': is empty (at least the answer is needed)"),
    (_line(targets=["A", 3, "moon"]), "field 'targets[1]': must be a string, not an integer"),
    (_line(targets=["", "moon"]), "field 'targets[0]': is empty"),
    (_line(targets=["moon", "<HALT>"], answer="<HALT>"), "field 'targets[1]': is <HALT>; leave it out"),
    (_line(answer="sun"), "field 'answer': 'sun' differs from the last target 'moon'"),
    (_line(prompt="A = moon. What is A?\nAnswer:"), "field 'prompt': ends with the template's 'Answer:'"),
]


def test_every_bad_line_is_reported_with_file_line_field_and_reason(tmp_path):
    for text, message in BAD_LINES:
        path = tmp_path / "bad.jsonl"
        path.write_text(_line(id="ok") + "\n" + text + "\n")
        with pytest.raises(RLFError) as info:
            read_jsonl(path)
        assert f"{path}: 1 invalid line(s) of 2" in str(info.value)
        assert f"{path}:2: {message}" in str(info.value), (text, str(info.value))


def test_raw_bytes_problems_duplicate_ids_and_single_token_rule(tmp_path, tok):
    path = tmp_path / "raw.jsonl"
    path.write_bytes(
        _line().encode() + b"\n" + _line(id="y").encode()[:-1] + b'\x00}\n' + b"\xff\xfe\n" + _line().encode() + b"\n"
        + _line(id="z", targets=["moon cake"], answer="moon cake").encode() + b"\n"
    )  # fmt: skip
    report = check_jsonl(path, tok)
    messages = [str(e) for e in report.errors]
    assert messages == [
        f"{path}:2: contains a NUL byte at column {len(_line(id='y'))}",
        f"{path}:3: not valid UTF-8 (byte 1)",
        f"{path}:4: field 'id': duplicate id 'x' (first on line 1)",
        f"{path}:5: field 'targets[0]': 'moon cake' is 2 tokens with a leading space [' moon', ' cake'], not 1",
    ]
    assert [ex.id for ex in report.examples] == ["x"]
    with pytest.raises(RLFError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(RLFError, match="the file holds no examples"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_errors_are_capped_with_a_count_and_skipping_is_explicit(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join([_line(id=f"ok{i}") for i in range(3)] + ["nope"] * 25) + "\n")
    with pytest.raises(RLFError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert "25 invalid line(s) of 28" in message and "... and 5 more" in message
    assert message.count("not JSON") == 20
    with pytest.raises(RLFError, match="skip_invalid=True needs reject_path"):
        read_jsonl(path, skip_invalid=True)
    reject = tmp_path / "rejects.jsonl"
    examples = read_jsonl(path, skip_invalid=True, reject_path=reject)
    assert [ex.id for ex in examples] == ["ok0", "ok1", "ok2"]
    rejected = [json.loads(line) for line in reject.read_text().splitlines()]
    assert [r["line"] for r in rejected] == list(range(4, 29))
    assert rejected[0]["text"] == "nope" and rejected[0]["errors"][0].startswith("not JSON")


def test_write_read_round_trip_keeps_meta(tmp_path):
    examples = [Example("a", "t", "p", ["x", "y"], "y", 1, {"k": [1, 2], "s": "é"}), Example("b", "t", "q", ["z"], "z", 0)]
    write_jsonl(examples, tmp_path / "rt.jsonl")
    assert read_jsonl(tmp_path / "rt.jsonl") == examples
    with pytest.raises(RLFError, match="does not exist"):
        write_jsonl(examples, tmp_path / "no" / "dir.jsonl")


# ---------------------------------------------------------------------------------------------
# bAbI and Coconut


@needs_babi
def test_babi_counts_match_the_files():
    root = BABI_DIR / "en-10k"
    for task in range(1, 21):
        assert len(read_babi(root, task, "test")) == 1000, task
        assert len(read_babi(root, task, "train")) == (1000 if task == 3 else 10000), task


@needs_babi
def test_babi_targets_on_hand_picked_stories(tok):
    root = BABI_DIR / "en-10k"
    by_line = lambda task: {ex.meta["line"]: ex for ex in read_babi(root, task, "train")}  # noqa: E731
    one, two, three = by_line(1), by_line(2), by_line(3)
    # qa1 story 1: "1 Mary moved to the bathroom. 2 John went to the hallway. 3 Where is Mary?  bathroom 1"
    assert one[3].prompt == "Mary moved to the bathroom. John went to the hallway. Where is Mary?"
    assert one[3].targets == ["bathroom"] and one[3].hops == 1
    # qa2 story 1: Mary got the football (3), went back to the garden (6); later dropped it (12)
    assert two[7].prompt.endswith("Mary went back to the garden. Where is the football?")
    assert two[7].targets == ["Mary", "garden"] and two[7].meta["facts"] == [3, 6]
    assert two[14].targets == ["Mary", "garden"] and two[14].meta["facts"] == [12, 6]
    assert two[19].targets == ["Mary", "hallway"]  # Mary took it again (15), travelled to the hallway (17)
    # qa3 story 1: "Where was the football before the bathroom?" office (23 17 5): Mary, bathroom, office
    assert three[25].targets == ["Mary", "bathroom", "office"] and three[25].hops == 3
    assert three[31].targets == ["Daniel", "garden", "bathroom"]  # the apple: 29 Daniel left it, 20, 15
    assert "Where is" not in three[25].prompt  # earlier questions are not part of the story
    # across the whole files: the holder is the subject of every supporting fact of tasks 2 and 3
    for examples in (two, three):
        for ex in examples.values():
            assert ex.targets[-1] == ex.answer and ex.targets[0][0].isupper()


@needs_babi
def test_babi_multi_token_targets_are_reported_renamed_or_skipped(tok, tmp_path):
    root = BABI_DIR / "en-10k"
    with pytest.raises(RLFError, match=r"qa1_single-supporting-fact_test.txt:3: field 'targets\[0\]': 'hallway' is 2 tokens"):
        read_babi(root, 1, "test", tok)
    renamed = read_babi(root, 1, "test", tok, rename={"hallway": "corridor"})
    assert len(renamed) == 1000 and "hallway" not in " ".join(ex.prompt for ex in renamed)
    assert renamed[0].meta["renamed"] == ["hallway=corridor"]
    kept = read_babi(root, 19, "test", tok, skip_invalid=True, reject_path=tmp_path / "rej.jsonl")
    assert kept == [] and len((tmp_path / "rej.jsonl").read_text().splitlines()) == 1000
    with pytest.raises(RLFError, match="expected one file qa21|task 21 must be an integer from 1 to 20"):
        read_babi(root, 21)
    with pytest.raises(RLFError, match="split 'dev' must be one of train, test"):
        read_babi(root, 1, "dev")
    bad = tmp_path / "qa1_bad_train.txt"
    bad.write_text("1 Mary went home.\nMary is here.\n2 Where is Mary?\thome\t7\n3 Where is Mary?\thome\n")
    with pytest.raises(RLFError) as info:
        read_babi(bad, 1)
    assert f"{bad}:2: expected 'NUMBER sentence'" in str(info.value)
    assert f"{bad}:3: field 'facts': sentence(s) [7] are not earlier in this story" in str(info.value)
    assert f"{bad}:4: a question line needs 'NUMBER question<TAB>answer<TAB>fact numbers'" in str(info.value)


def test_coconut_json_loads_from_graph_or_steps(tmp_path, tok):
    items = [
        {
            "question": "Every lamp is a river. Tom is a lamp. Every river is a cloud. Sam is a stone. Is Tom a cloud or a stone?",
            "answer": "Tom is a cloud.",
            "steps": ["Tom is a lamp.", "Every lamp is a river.", "Every river is a cloud."],
            "idx_to_symbol": ["Tom", "lamp", "river", "cloud", "stone", "Sam"],
            "edges": [[0, 1], [1, 2], [2, 3], [5, 4]],
            "root": 0,
            "target": 3,
            "neg_target": 4,
        },
        {"question": "Tom has 3 boxes of 4 apples and eats 2. How many are left?", "answer": "10", "steps": ["<<3*4=12>>", "<<12-2=10>>"]},
        {"question": "q?", "answer": "moon", "steps": ["so it is the moon."]},
    ]
    path = tmp_path / "coconut.json"
    path.write_text(json.dumps(items))
    graph, steps, same = read_coconut(path)
    assert graph.targets == ["lamp", "river", "cloud"] and graph.hops == 2 and graph.meta["neg"] == "stone"
    assert steps.targets == ["12", "10"] and steps.answer == "10"
    assert same.targets == ["moon"]
    items += [{"question": "q?", "answer": "a"}, {**items[0], "target": 4}, {**items[0], "edges": [[0, 9]]}, 5]
    path.write_text(json.dumps(items))
    with pytest.raises(RLFError) as info:
        read_coconut(path, tok)
    message = str(info.value)
    for expected in [
        f"{path}: 5 invalid item(s) of 7",
        f"{path}: item 2: field 'targets[0]': '12' is 3 tokens with a leading space [' ', '1', '2']",
        f"{path}: item 4: field 'steps': missing",
        f"{path}: item 5: field 'target': node 4 is not reachable from root 0 along the edges",
        f"{path}: item 6: field 'edges': must be a list of [from, to] pairs of node numbers 0..5",
        f"{path}: item 7: not a JSON object but an integer",
    ]:
        assert expected in message, (expected, message)
    path.write_text("{")
    with pytest.raises(RLFError, match="not a JSON file"):
        read_coconut(path)


# ---------------------------------------------------------------------------------------------
# Splits


def test_make_splits_share_no_prompt_and_cover_the_hops(tok):
    assert default_ood_hops([1, 2, 3, 4, 5]) == [6, 8, 10, 12, 16, 24, 32]
    splits = make_splits("chain", tok, train_hops=[1, 2], n_train=400, n_val=50, n_test=50, n_ood=70, seed=0, order="backward")
    prompts = {name: {ex.prompt for ex in examples} for name, examples in splits.items()}
    names = list(prompts)
    assert all(not prompts[a] & prompts[b] for a in names for b in names if a < b)
    assert {ex.hops for ex in splits["train"]} == {1, 2} == {ex.hops for ex in splits["test"]}
    assert {ex.hops for ex in splits["ood"]} == {6, 8, 10, 12, 16, 24, 32}
    assert len({ex.id for examples in splits.values() for ex in examples}) == 570
    with pytest.raises(RLFError, match=r"OOD hops \[2\] are also training hops"):
        make_splits("chain", tok, train_hops=[1, 2], n_train=1, n_val=1, n_test=1, n_ood=1, ood_hops=[2, 6])


def test_split_examples_keeps_equal_prompts_together():
    examples = [Example(f"e{i}", "t", f"p{i % 50}", ["a"], "a", i % 3) for i in range(300)]
    examples += [Example(f"o{i}", "t", f"long{i}", ["a"], "a", 9) for i in range(20)]
    splits = split_examples(examples, val=0.2, test=0.2, seed=1, ood_hops=[9])
    where = {}
    for name, part in splits.items():
        for ex in part:
            assert where.setdefault(ex.prompt, name) == name
    assert sum(map(len, splits.values())) == 320 and len(splits["ood"]) == 20
    assert {ex.hops for ex in splits["val"]} == {0, 1, 2}
    with pytest.raises(RLFError, match="must be in"):
        split_examples(examples, val=0.6, test=0.5)


# ---------------------------------------------------------------------------------------------
# `rlf data`


def test_cli_generate_then_check_reports_zero_invalid_lines(tmp_path, capsys):
    out = tmp_path / "X.jsonl"
    args = ["data", "chain", "--hops", "1-5", "--n", "2000", "--order", "backward", "--distractors", "2", "--seed", "0"]
    assert main([*args, "-o", str(out)]) == 0
    first = out.read_bytes()
    assert main([*args, "-o", str(out)]) == 0 and out.read_bytes() == first
    assert main(["data", "check", str(out), "--base", "smollm2-135m"]) == 0
    report = capsys.readouterr().out
    assert f"{out}: 2000 lines, 2000 valid, 0 invalid" in report
    assert re.search(r"chain\s+5\s+400", report)


def test_cli_reports_bad_files_and_bad_options(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_line() + "\n" + _line(id="b", targets=["moon cake"], answer="moon cake") + "\n\n")
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "3 lines, 1 valid, 2 invalid" in out and f"{bad}:3: blank line" in out and "'moon cake' is 2 tokens" in out
    for argv, message in [
        (["data", "chain", "--hops", "5-1", "-o", str(tmp_path / "x.jsonl")], "--hops '5-1'"),
        (["data", "chain", "--n", "0", "-o", str(tmp_path / "x.jsonl")], "--n 0: the number of examples must be at least 1"),
        (["data", "chain", "--order", "up", "-o", str(tmp_path / "x.jsonl")], "order='up' must be one of forward, backward"),
        (["data", "math", "-o", str(tmp_path / "no" / "x.jsonl")], "does not exist"),
        (["data", "check", str(tmp_path / "none.jsonl")], "no such file"),
        (["data", "coconut", str(bad), "--skip-invalid", "-o", str(tmp_path / "c.jsonl")], "--skip-invalid needs --reject"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_cli_other_tasks_readers_and_split(tmp_path, capsys):
    for task, extra in [("graph", ["--distractors", "6"]), ("override", ["--factual"]), ("sequence", ["--hops", "1-3"])]:
        out = tmp_path / f"{task}.jsonl"
        assert main(["data", task, "--n", "30", "--adversarial", "1", *extra, "-o", str(out)]) == 0
        assert len(read_jsonl(out)) == 30
    assert all(ex.meta["factual"] and ex.targets[-1] == ex.meta["prior"] for ex in read_jsonl(tmp_path / "override.jsonl"))
    assert main(["data", "split", str(tmp_path / "graph.jsonl"), "-o", str(tmp_path / "sp"), "--ood-hops", "6"]) == 0
    assert sorted(p.name for p in (tmp_path / "sp").iterdir()) == ["ood.jsonl", "test.jsonl", "train.jsonl", "val.jsonl"]
    if (BABI_DIR / "en-10k").is_dir():
        out = tmp_path / "babi.jsonl"
        assert main(["data", "babi", str(BABI_DIR / "en-10k"), "--task", "1-2", "--split", "test", "-o", str(out)]) == 2
        assert "hint: rename multi-token words" in capsys.readouterr().err
        argv = ["data", "babi", str(BABI_DIR / "en-10k"), "--task", "1-2", "--split", "test", "--rename", "hallway=corridor"]
        assert main([*argv, "-o", str(out)]) == 0
        assert Counter(ex.task for ex in read_jsonl(out)) == {"babi-qa1": 1000, "babi-qa2": 1000}
