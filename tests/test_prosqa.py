"""ProsQA-style graphs with real words: the `graph` generator's `words=prosqa` option (invented multi-token concept
words, ProsQA's people and sentence forms), checked by a resolver written independently of it, and real ProsQA items
(a fixture of four, tests/fixtures/README.md) through the Coconut reader with target_tokens = 4."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from rlf.cli import main
from rlf.errors import RLFError
from rlf.tasks import generate, read_coconut, read_jsonl, write_jsonl

from eval_helpers import shortest_path

FIXTURE = Path(__file__).parent / "fixtures" / "prosqa_valid_sample.json"
# ProsQA's sentence forms, read off its files: `Tom is a terpus.`, `Every terpus is a brimpus.` (always `a`, even
# before `impus`) and `Is Tom a lempus or scrompus?` (no article before the second option).
FACT = re.compile(r"(?:Every ([a-z]+)|([A-Z][a-z]+)) is a ([a-z]+)\.")
QUESTION = re.compile(r"Is ([A-Z][a-z]+) a ([a-z]+) or ([a-z]+)\?")


@pytest.fixture(scope="module")
def tok():
    from rlf.base import load_tokenizer

    return load_tokenizer("smollm2-135m")


def n_tokens(tok, words: list[str]) -> list[int]:
    return [len(ids) for ids in tok([" " + w for w in words], add_special_tokens=False)["input_ids"]]


def resolve(prompt: str, unique: bool = True) -> tuple[list[str], str, str]:
    """(targets, answer, the other option) by BFS over the facts from the question's subject: a shortest path to the
    one reachable option, which must be the only one when `unique`. Sentences of other forms (noise) are ignored."""
    *body, question = re.split(r"(?<=[.?])\s+", prompt)
    subject, *options = QUESTION.fullmatch(question).groups()
    edges: dict[str, list[str]] = {}
    for sentence in body:
        if m := FACT.fullmatch(sentence):
            edges.setdefault(m.group(1) or m.group(2), []).append(m.group(3))
    path, answer = shortest_path(edges, subject, options, unique)
    return path, answer, next(o for o in options if o != answer)


def concepts_of(prompt: str) -> list[str]:
    """Every concept word the facts and question name, with repeats."""
    return re.findall(r"(?<=Every )[a-z]+|(?<= a )[a-z]+|(?<= or )[a-z]+", prompt)


# ---------------------------------------------------------------------------------------------
# The generator


@pytest.mark.parametrize("k", [2, 3, 4])
def test_prosqa_words_are_multi_token_within_k_and_distinct_in_each_example(tok, k):
    examples = generate("graph", 120, [1, 2, 3, 4, 5, 6], k, tok, words="prosqa", word_tokens=k, distractors=4)
    targets = sorted({t for ex in examples for t in ex.targets})
    assert set(n_tokens(tok, targets)) <= set(range(2, k + 1)) and max(n_tokens(tok, targets)) == k
    for ex in examples:
        named = set(concepts_of(ex.prompt))
        assert len(named) == 2 * (ex.hops + 1) + 4, "path, negative branch and dead ends never share a word"
        assert all(w.endswith("pus") for w in named) and ex.meta["words"] == "prosqa"
    assert len({t for ex in examples for t in ex.targets}) > 100, "words come from a pool, not a handful"


def test_prosqa_words_cover_the_real_ones(tok):
    from rlf.tasks.graph import prosqa_words
    from rlf.tasks.vocab import build_vocab

    pool = prosqa_words(build_vocab(tok), 4)
    real = {s for item in json.loads(FIXTURE.read_text()) for s in item["idx_to_symbol"] if s.islower()}
    assert real <= set(pool) and len(pool) == 702 and min(n_tokens(tok, list(pool))) == 2


def test_prosqa_style_targets_match_an_independent_resolver_and_read_like_prosqa(tok):
    examples = generate("graph", 200, [1, 2, 3, 4, 5, 6, 10], 4, tok, words="prosqa") + generate(
        "graph", 40, [3, 6, 24], 5, tok, words="prosqa", distractors="0-10", adversarial=2
    )
    for ex in examples:
        targets, answer, other = resolve(ex.prompt)
        assert ex.targets == targets and ex.answer == answer == targets[-1] and ex.meta["neg"] == other
        assert len(ex.targets) == ex.hops + 1
    for ex in examples[:200]:  # no noise: every sentence is one of ProsQA's forms
        *body, question = re.split(r"(?<=[.?])\s+", ex.prompt)
        assert QUESTION.fullmatch(question) and all(FACT.fullmatch(s) for s in body), ex.prompt
    for item in json.loads(FIXTURE.read_text()):  # ... the forms ProsQA's own questions are written in
        *body, question = re.split(r"(?<=[.?])\s+", item["question"].strip())
        assert QUESTION.fullmatch(question) and all(FACT.fullmatch(s) for s in body)


def test_the_default_one_token_words_are_unchanged_byte_for_byte(tok):
    def digest(examples) -> str:
        text = "".join(json.dumps(asdict(ex), ensure_ascii=False) + "\n" for ex in examples)
        return hashlib.sha256(text.encode()).hexdigest()

    default = generate("graph", 200, [1, 2, 3, 6, 10], 4, tok)
    assert default == generate("graph", 200, [1, 2, 3, 6, 10], 4, tok, words="vocab")
    # the sha256 of the same call's JSONL before the words option existed (commit 562a80a)
    assert digest(default) == "f300c1bd0ee074935aa3f06bda403d3f321c7cf234f67c06655ba3f5880806c0"
    assert set(n_tokens(tok, sorted({t for ex in default for t in ex.targets}))) == {1}


def test_bad_generator_options_are_refused(tok):
    cases = [
        (dict(words="klingon"), "graph: option words='klingon' must be one of vocab, prosqa"),
        (dict(words="prosqa", word_tokens=1), "graph: option word_tokens=1 must be an integer >= 2"),
        (dict(word_tokens=3), "graph: option word_tokens=3 applies to words=prosqa only"),
        (dict(words="prosqa", word_tokens=2, distractors=300), "needs 304 distinct concept words but words=prosqa "
                                                               "gives only 232 of 2 to 2 tokens"),
    ]
    for options, message in cases:
        with pytest.raises(RLFError, match=re.escape(message)):
            generate("graph", 2, [1], 0, tok, **options)


def test_rlf_data_graph_writes_prosqa_words_that_check_at_k(tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    argv = ["data", "graph", "--n", "40", "--words", "prosqa", "--word-tokens", "3", "-o", str(out)]
    assert main(argv) == 0
    assert main(["data", "check", str(out), "--target-tokens", "3"]) == 0
    assert "40 lines, 40 valid, 0 invalid" in capsys.readouterr().out
    assert main(["data", "check", str(out)]) == 1  # one token per loop: every line is refused
    assert "40 invalid" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Real ProsQA items through the Coconut reader


def test_real_prosqa_items_load_with_none_refused_and_the_steps_as_targets(tmp_path, tok):
    items = json.loads(FIXTURE.read_text())
    examples = read_coconut(FIXTURE, tok, max_tokens=4)
    assert len(examples) == len(items) == 4
    for item, ex in zip(items, examples):
        steps = [re.fullmatch(r"(?:Every )?\w+ is a (\w+)\.", s).group(1) for s in item["steps"]]
        assert ex.targets == steps and ex.hops == len(steps) - 1  # the subject's own concept is loop 1
        assert ex.answer == re.fullmatch(r"\w+ is a (\w+)\.", item["answer"]).group(1)
        assert ex.meta["neg"] == item["idx_to_symbol"][item["neg_target"]] and ex.prompt == item["question"].strip()
        shortest, answer, other = resolve(ex.prompt, unique=False)
        assert (answer, other) == (ex.answer, ex.meta["neg"]) and len(shortest) == len(ex.targets)
    assert examples[1].targets[-1] == "gwompus" and n_tokens(tok, ["gwompus"]) == [4]
    # item 3 has two shortest paths (through boompus or lempus); the steps take lempus, the first found in edge
    # order is boompus: the reader follows the steps
    assert examples[2].targets == ["lempus", "rorpus", "scrompus", "storpus"]
    wrong_steps = {**items[2], "steps": ["Gabriel is a lempus.", "Every lempus is a storpus."]}  # not an edge
    path = tmp_path / "p.json"
    path.write_text(json.dumps([wrong_steps]))
    assert read_coconut(path, tok, max_tokens=4)[0].targets == ["boompus", "rorpus", "scrompus", "storpus"]


def test_rlf_data_coconut_takes_target_tokens(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["data", "coconut", str(FIXTURE), "--target-tokens", "4", "-o", str(out)]) == 0
    assert [ex.targets for ex in read_jsonl(out)] == [ex.targets for ex in read_coconut(FIXTURE)]
    assert main(["data", "check", str(out), "--target-tokens", "4"]) == 0
    capsys.readouterr()
    assert main(["data", "coconut", str(FIXTURE), "--target-tokens", "3", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{FIXTURE}: 2 invalid item(s) of 4" in err and "hint: allow longer targets with --target-tokens K" in err
    assert f"{FIXTURE}: item 2: field 'targets[3]': 'gwompus' is 4 tokens with a leading space" in err
    assert "not 1 to 3 (target_tokens=3)" in err
    assert main(["data", "coconut", str(FIXTURE), "-o", str(out)]) == 2  # K = 1: every item has a 2+-token word
    assert f"{FIXTURE}: 4 invalid item(s) of 4" in capsys.readouterr().err
    assert main(["data", "coconut", str(FIXTURE), "--target-tokens", "0", "-o", str(out)]) == 2
    assert "--target-tokens 0: must be 1 or more" in capsys.readouterr().err


def test_bad_input_is_refused_naming_file_item_or_line_and_field(tmp_path, tok):
    item = json.loads(FIXTURE.read_text())[0]
    blank = {**item, "idx_to_symbol": [s if s != "lempus" else "  " for s in item["idx_to_symbol"]]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([item, blank, {**item, "question": " "}]))
    with pytest.raises(RLFError) as info:
        read_coconut(path, tok, max_tokens=2)
    message = str(info.value)
    for expected in [
        f"{path}: 3 invalid item(s) of 3",
        f"{path}: item 1: field 'targets[1]': 'brimpus' is 3 tokens with a leading space [' br', 'imp', 'us'], "
        "not 1 to 2 (target_tokens=2)",
        f"{path}: item 2: field 'idx_to_symbol': must be a list of non-empty strings (not only whitespace)",
        f"{path}: item 3: field 'question': is empty",
    ]:
        assert expected in message, (expected, message)
    generated = tmp_path / "g.jsonl"  # the JSONL reader: a generated word longer than the run's K, an empty target
    write_jsonl(generate("graph", 3, [2], 0, tok, words="prosqa", word_tokens=4), generated)
    lines = generated.read_text().splitlines()
    assert read_jsonl(generated, tok, max_tokens=4)
    with pytest.raises(RLFError, match=rf"{generated}:\d: field 'targets\[\d\]': '\w+pus' is 3 tokens .* not 1 to 2"):
        read_jsonl(generated, tok, max_tokens=2)
    empty = json.loads(lines[1])
    empty["targets"][0] = ""
    generated.write_text("\n".join([lines[0], json.dumps(empty), lines[2]]) + "\n")
    with pytest.raises(RLFError, match=rf"{generated}:2: field 'targets\[0\]': is empty"):
        read_jsonl(generated, tok, max_tokens=4)


def test_a_graph_run_with_graph_words_prosqa_trains_on_multi_token_words_and_needs_k(tok):
    from rlf.config import TrainConfig
    from rlf.train import make_data

    cfg = TrainConfig(task="graph", graph_words="prosqa", target_tokens=3, hops="2-3", n_train=20, n_val=5)
    train, val = make_data(cfg, tok)
    lengths = n_tokens(tok, [t for ex in train + val for t in ex.targets])
    assert max(lengths) == 3 and min(lengths) >= 2
    assert TrainConfig(task="graph").digest() == TrainConfig(task="graph", graph_words="vocab").digest()
    with pytest.raises(RLFError, match="graph_words=prosqa needs target_tokens >= 2"):
        TrainConfig(task="graph", graph_words="prosqa")
