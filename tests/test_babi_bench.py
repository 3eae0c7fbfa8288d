"""`rlf bench babi` on a tiny fake bAbI folder and the tiny base: its committed parts and the table made of them,
reused in a fresh process without training, stale when the config or a data file changes, a refused task recorded
with its reason, and clear errors for a bad --data folder or a missing task file."""

import json
import shutil
import subprocess
import sys

import pytest

from rlf.bench_babi import PUBLISHED, VAL_FRACTION, read_babi_part
from rlf.cli import main
from rlf.errors import RLFError
from rlf.evaluate import fmt_rate
from rlf.headline.render import fmt_seconds
from rlf.tasks import read_babi, read_jsonl
from rlf.tasks.babi import split_last_stories
from rlf.train import file_digest

from eval_helpers import main_in

NAMES = ["Mary", "John", "Sandra", "Daniel"]
PLACES = ["bathroom", "kitchen", "office", "garden", "bedroom"]  # one SmolLM2 token each, unlike `hallway`
OVERRIDES = ["max_steps=4", "batch_size=4", "warmup_steps=1", "val_every=2", "ckpt_every=4", "log_every=2",
             "max_loops=4"]
COMMAND = ["bench", "babi", "--tasks", "1,2,8", "--results", "docs/babi", "--doc", "docs/babi.md", "--out",
           "runs/babi", "--preset", "tiny"]  # then --data, then the overrides


def story_lines(task: int, s: int) -> list[str]:
    """One story of a task in the bAbI text format (numbered lines, `question<TAB>answer<TAB>facts`)."""
    a, b = NAMES[s % 4], NAMES[(s + 1) % 4]
    p, q, r = PLACES[s % 5], PLACES[(s + 2) % 5], PLACES[(s + 4) % 5]
    if task == 1:
        return [f"{a} moved to the {p}.", f"{b} went to the {q}.", f"Where is {a}? \t{p}\t1",
                f"{a} journeyed to the {r}.", f"Where is {a}? \t{r}\t4", f"Where is {b}? \t{q}\t2"]
    if task == 2:
        return [f"{a} went to the {p}.", f"{a} got the football there.", f"{b} went to the {r}.",
                f"{a} travelled to the {q}.", f"Where is the football? \t{q}\t2 4"]
    return [f"{a} got the milk there.", f"{a} went to the {p}.", f"What is {a} carrying? \tmilk\t1",
            f"{a} took the apple there.", f"What is {a} carrying? \tmilk,apple\t1 4"]  # 'milk,apple': 3 tokens


def write_task(folder, task: int, name: str, stories: dict[str, int]) -> None:
    for split, n in stories.items():
        lines = [f"{i} {text}" for s in range(n) for i, text in enumerate(story_lines(task, s), 1)]
        (folder / f"qa{task}_{name}_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def fake_babi(tmp_path_factory):
    folder = tmp_path_factory.mktemp("babi") / "en-10k"
    folder.mkdir()
    for task in (1, 2, 8):
        write_task(folder, task, PUBLISHED[task][0], {"train": 10, "test": 4})
    return folder


@pytest.fixture(scope="module")
def measured(fake_babi, tmp_path_factory):
    """One `rlf bench babi` run on tasks 1, 2 and 8 of the fake folder: runs in ROOT/runs, parts and table in
    ROOT/docs."""
    root = tmp_path_factory.mktemp("bench")
    main_in(root, [*COMMAND, "--data", str(fake_babi), *OVERRIDES])
    return root


def _parts(docs) -> dict:
    return {p.name: p.read_bytes() for p in sorted((docs / "babi").glob("*.json"))}


def test_split_last_stories_holds_out_whole_stories(fake_babi):
    examples = read_babi(fake_babi, 1, "train")
    train, val = split_last_stories(examples, VAL_FRACTION)
    assert len(examples) == 30 and len(val) == 3 and len(train) == 27  # 10 stories of 3 questions: the last one
    assert {ex.meta["story"] for ex in val} == {10} and 10 not in {ex.meta["story"] for ex in train}
    assert train + val == examples


def test_the_reader_takes_targets_of_up_to_target_tokens_tokens(fake_babi, tiny_llama, tmp_path, capsys):
    with pytest.raises(RLFError, match=r"qa8_lists-sets_train.txt:5: field 'targets\[0\]': 'milk,apple' is 3 tokens"):
        read_babi(fake_babi, 8, "train", tiny_llama.tokenizer)
    assert len(read_babi(fake_babi, 8, "train", tiny_llama.tokenizer, max_tokens=3)) == 20
    argv = ["data", "babi", str(fake_babi), "--task", "8", "--base", "tiny-llama", "-o", str(tmp_path / "8.jsonl")]
    assert main(argv) == 2 and "--target-tokens K" in capsys.readouterr().err
    assert main([*argv, "--target-tokens", "3"]) == 0 and len(read_jsonl(tmp_path / "8.jsonl")) == 20


def test_a_run_writes_one_part_per_task_and_the_table_from_them(measured, fake_babi):
    docs = measured / "docs"
    assert sorted(_parts(docs)) == ["qa01-seed0.json", "qa02-seed0.json", "qa08-seed0.json"]
    one, two = read_babi_part(docs / "babi" / "qa01-seed0.json"), read_babi_part(docs / "babi" / "qa02-seed0.json")
    assert one["key"]["train"] == file_digest(fake_babi / "qa1_single-supporting-fact_train.txt")
    assert one["key"]["test"] == file_digest(fake_babi / "qa1_single-supporting-fact_test.txt")
    assert one["key"]["code"] == 1 and one["key"]["seed"] == 0 and one["key"]["settings"] == {"val_fraction": 0.1}
    v = one["value"]
    assert (v["n_train"], v["n_val"], v["n_test"]) == (27, 3, 12) and v["steps"] == 4
    # the run's own training time (rounded to 0.1 s there: 4 tiny steps can round to 0.0, so not asserted > 0)
    assert v["train_seconds"] == json.loads((measured / "runs" / "babi" / "qa1" / "summary.json").read_text())[
        "train_seconds"]
    assert v["test_error"]["n"] == 12 and v["test_error"]["k"] == 12 - v["answer_acc"]["k"]
    assert not v["loop_targets"] and two["value"]["loop_targets"]  # task 2: the holder, then the place
    assert two["value"]["trace_acc"]["n"] == 4 and two["value"]["n_val"] == 1
    assert {"date", "machine", "versions", "command", "weights"} <= set(one["measured"])
    assert one["measured"]["command"].startswith("rlf bench babi --data ")
    assert (measured / "runs" / "babi" / "qa1" / "model.safetensors").is_file()
    md = (docs / "babi.md").read_text()
    assert md.splitlines()[2] == f"Generated by `{one['measured']['command']}` from the result parts committed in " \
                                 "`docs/babi/` (one JSON file per task), not from run directories; do not edit by hand."
    names = {name for name, _, _ in PUBLISHED.values()}
    rows = {int(r.split(" | ")[0][2:]): r for r in md.splitlines() if r.count(" | ") > 1 and r.split(" | ")[1] in names}
    assert sorted(rows) == list(range(1, 21))
    assert rows[1] == (f"| 1 | single-supporting-fact | 27 / 3 / 12 | {fmt_rate(v['test_error'])} | answer only | "
                       f"{fmt_seconds(v['train_seconds'])}, 4 steps | 0.0 | 0.0 |")
    assert f"| {fmt_rate(two['value']['trace_acc'])} |" in rows[2] and rows[2].endswith("| 0.3 | 0.1 |")
    assert rows[3] == "| 3 | three-supporting-facts | — | not measured | — | — | 9.3 | 4.1 |"
    assert rows[10].endswith("| — | 0.6 |")  # MemN2N task 10: the copies disagree, left out
    assert "- parts: 3 current, 0 stale" in md and "- tasks measured: 2 of 20; refused by the reader: 1" in md
    assert "figures from the papers" in md and "facebookarchive/MemNN" in md and "ml-lab/rmn" in md


def test_a_task_the_reader_refuses_gets_a_part_with_the_reason(measured):
    part = read_babi_part(measured / "docs" / "babi" / "qa08-seed0.json")
    assert part["value"]["train_file"] == "qa8_lists-sets_train.txt"
    assert "qa8_lists-sets_train.txt: 10 invalid line(s) of 50" in part["value"]["refused"]
    assert "'milk,apple' is 3 tokens with a leading space" in part["value"]["refused"]
    assert str(measured) not in part["value"]["refused"]  # file names only, not the folder
    assert not (measured / "runs" / "babi" / "qa8").exists()
    row = next(r for r in (measured / "docs" / "babi.md").read_text().splitlines() if r.startswith("| 8 |"))
    assert row.startswith("| 8 | lists-sets | — | refused by the reader: 10 invalid line(s) of 50; ")
    assert "'milk,apple' is 3 tokens" in row and row.endswith("| — | 0.5 |")


def test_a_fresh_process_reuses_the_parts_without_training(measured, fake_babi, tmp_path):
    """The same command in another folder holding only the committed parts: it trains, encodes and rewrites nothing
    and writes the same table."""
    shutil.copytree(measured / "docs", tmp_path / "docs")
    before = _parts(tmp_path / "docs")
    (tmp_path / "docs" / "babi.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "rlf.cli", *COMMAND, "--data", str(fake_babi), *OVERRIDES],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("committed with its key; reused") == 3
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing trained or encoded
    assert _parts(tmp_path / "docs") == before
    assert (tmp_path / "docs" / "babi.md").read_text() == (measured / "docs" / "babi.md").read_text()


def test_a_changed_config_or_data_file_makes_parts_stale(measured, fake_babi, tmp_path, monkeypatch):
    shutil.copytree(measured / "docs", tmp_path / "docs")
    data = tmp_path / "en-10k"
    shutil.copytree(fake_babi, data)
    monkeypatch.chdir(tmp_path)
    render = [*COMMAND, "--data", str(data), "--render", *OVERRIDES]
    assert main([*render, "lr=0.01"]) == 0  # another learning rate: every part is of another config
    md = (tmp_path / "docs" / "babi.md").read_text()
    assert "- parts: 0 current, 3 stale" in md and "## Stale parts" in md
    assert "| `qa01-seed0.json` | 1 |" in md and md.count("| config |") == 3
    assert "| 1 | single-supporting-fact | — | stale (below) | — | — | 0.0 | 0.0 |" in md
    assert not (tmp_path / "runs").exists()  # --render trains nothing
    with open(data / "qa2_two-supporting-facts_test.txt", "a") as f:  # task 2's test file grows by one story
        f.write("\n".join(f"{i} {t}" for i, t in enumerate(story_lines(2, 7), 1)) + "\n")
    assert main(render) == 0
    md = (tmp_path / "docs" / "babi.md").read_text()
    assert "- parts: 2 current, 1 stale" in md and "| `qa02-seed0.json` | 2 |" in md and "| test |" in md
    assert "| 1 | single-supporting-fact | 27 / 3 / 12 |" in md


def test_bad_data_folder_missing_task_file_and_tool_keys_are_clear_errors(fake_babi, tmp_path, capsys):
    base = ["bench", "babi", "--results", str(tmp_path / "r"), "--doc", str(tmp_path / "b.md"), "--preset", "tiny"]
    for argv, message in [
        (["--data", str(tmp_path / "nowhere")], f"--data {tmp_path / 'nowhere'}: not a directory"),
        (["--data", str(fake_babi / "qa1_single-supporting-fact_train.txt")], "not a directory"),
        (["--data", str(fake_babi), "--tasks", "1,5"],
         f"--data {fake_babi}: task 5: babi: expected one file qa5_*_train*.txt under {fake_babi}, found none"),
        (["--data", str(fake_babi), "--tasks", "21"], "--tasks"),
        (["--data", str(fake_babi), *OVERRIDES, "train_file=x.jsonl"],
         "train_file, val_file are set per task from --data"),
    ]:
        assert main([*base, *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "r").exists()  # refused before anything was measured
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "qa01-seed0.json").write_text(json.dumps({"task": 1}))
    assert main([*base, "--data", str(fake_babi), "--render"]) == 2
    assert f"{tmp_path / 'r' / 'qa01-seed0.json'}: field `spec` missing" in capsys.readouterr().err
