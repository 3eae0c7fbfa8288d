"""`babi`: a reader for the bAbI QA text format (Weston et al., 2015), all 20 tasks.

Lines are `N sentence` (a story restarts when N goes back to 1) and `N question<TAB>answer<TAB>facts`.
The prompt is the story so far (earlier questions left out) then the question. Loop targets follow
the supporting facts where they form a chain:
task 1 (`Where is Mary?`): the location; task 2 (`Where is the milk?`): the person holding it, then
the location; task 3 (`Where was the milk before the office?`): the holder, the later location (the
one in the question), then the earlier one. Every other task: the answer alone.
`hops` is the number of supporting facts. Multi-word answers (task 8 `apple,milk`, task 19 `n,w`) are
kept as they are, so a tokenizer check reports them instead of splitting or dropping them.
Words that are several tokens for a tokenizer (SmolLM2: `hallway`) can be renamed explicitly,
`rename={"hallway": "corridor"}`, in prompt and targets; the renaming is recorded in `meta` as `old=new` strings.
"""

from __future__ import annotations

import re
from pathlib import Path

from rlf.errors import RLFError
from rlf.tasks.schema import Example, LineError, accept, finish_check, read_bytes

SPLITS = ("train", "test")
QUESTION_FORMAT = "NUMBER question<TAB>answer<TAB>fact numbers"
_LINE = re.compile(r"(\d+) (.*)")
_WHERE_IS = re.compile(r"Where is the (\w+)\?")
_WHERE_WAS = re.compile(r"Where was the (\w+) before the (\w+)\?")


def babi_file(path: str | Path, task: int, split: str = "train") -> Path:
    """The file of one task and split: `path` itself if it is a file, else the one match under `path`."""
    if split not in SPLITS:
        raise RLFError(f"babi: split {split!r} must be one of {', '.join(SPLITS)}")
    if isinstance(task, bool) or not isinstance(task, int) or not 1 <= task <= 20:
        raise RLFError(f"babi: task {task!r} must be an integer from 1 to 20")
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RLFError(f"babi: {path} is neither a bAbI file nor a directory holding them")
    matches = sorted(path.rglob(f"qa{task}_*_{split}*.txt"))
    if len(matches) != 1:
        found = ", ".join(str(m) for m in matches) or "none"
        raise RLFError(
            f"babi: expected one file qa{task}_*_{split}*.txt under {path}, found {found}; "
            "pass the directory of one variant (e.g. en-10k) or the file itself"
        )
    return matches[0]


def read_babi(
    path: str | Path,
    task: int,
    split: str = "train",
    tokenizer=None,
    *,
    skip_invalid: bool = False,
    reject_path: str | Path | None = None,
    rename: dict[str, str] | None = None,
    max_tokens: int = 1,
) -> list[Example]:
    """The questions of one bAbI task as examples; malformed lines (and, with a tokenizer, targets of more than
    `max_tokens` tokens: the run's target_tokens) are an RLFError naming file and line, unless `skip_invalid`
    writes them to `reject_path`. `rename` replaces whole words everywhere (e.g. `{"hallway": "corridor"}`)."""
    file = babi_file(path, task, split)
    text = read_bytes(file).decode("utf-8", errors="replace")
    rename = dict(rename or {})
    for old, new in rename.items():
        if not re.fullmatch(r"\w+", old) or not re.fullmatch(r"\w+", new):
            raise RLFError(f"babi: rename {old!r} -> {new!r}: both must be single words")
        text = re.sub(rf"\b{old}\b", new, text)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    story: dict[int, str] = {}  # sentence number -> sentence, for the current story
    order: list[int] = []  # story sentence numbers in order (questions excluded)
    story_index = 0
    valid: list[tuple[int, Example]] = []
    errors: list[LineError] = []
    for number, line in enumerate(lines, 1):
        match = _LINE.fullmatch(line.rstrip("\r"))
        if not match:
            errors.append(LineError(str(file), number, None, f"expected 'NUMBER sentence' or {QUESTION_FORMAT!r}"))
            continue
        n, text = int(match.group(1)), match.group(2)
        if n == 1:
            story, order, story_index = {}, [], story_index + 1
        if "\t" not in text:
            story[n] = text.strip()
            order.append(n)
            continue
        fields = text.split("\t")
        if len(fields) != 3 or not fields[1].strip():
            errors.append(LineError(str(file), number, None, f"a question line needs {QUESTION_FORMAT!r}"))
            continue
        question, answer = fields[0].strip(), fields[1].strip()
        try:
            facts = [int(f) for f in fields[2].split()]
        except ValueError:
            errors.append(LineError(str(file), number, "facts", f"{fields[2]!r} are not sentence numbers"))
            continue
        unknown = [f for f in facts if f not in story]
        if unknown:
            errors.append(LineError(str(file), number, "facts", f"sentence(s) {unknown} are not earlier in this story"))
            continue
        targets = _targets(task, question, answer, [story[f] for f in facts])
        if isinstance(targets, str):
            errors.append(LineError(str(file), number, "targets", targets))
            continue
        prompt = " ".join([*(story[i] for i in order), question])
        example = Example(
            id=f"babi-qa{task}-{split}-{len(valid):05d}",
            task=f"babi-qa{task}",
            prompt=prompt,
            targets=targets,
            answer=answer,
            hops=len(facts),
            meta={
                "babi_task": task,
                "split": split,
                "story": story_index,
                "line": number,
                "facts": facts,
                "renamed": [f"{old}={new}" for old, new in rename.items()],
            },
        )
        valid.append((number, example))
    return accept(finish_check(str(file), valid, errors, lines, tokenizer, max_tokens=max_tokens), skip_invalid,
                  reject_path)


def split_last_stories(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, validation): the questions of the last `fraction` of the stories (at least one story) are held out.
    bAbI has no validation split; holding out whole stories keeps a story's questions on one side."""
    stories = sorted({ex.meta["story"] for ex in examples})
    if len(stories) < 2:
        raise RLFError(f"babi: {len(stories)} story; holding out a validation split needs at least 2")
    held = set(stories[-max(1, round(fraction * len(stories))):])
    return [ex for ex in examples if ex.meta["story"] not in held], [ex for ex in examples if ex.meta["story"] in held]


def _targets(task: int, question: str, answer: str, facts: list[str]) -> list[str] | str:
    """The loop targets of one question, or the reason they cannot be built."""
    if task == 2 and (m := _WHERE_IS.fullmatch(question)):
        holder = _holder(m.group(1), facts)
        return [holder, answer] if holder else f"no supporting fact names who holds the {m.group(1)}"
    if task == 3 and (m := _WHERE_WAS.fullmatch(question)):
        holder = _holder(m.group(1), facts)
        return [holder, m.group(2), answer] if holder else f"no supporting fact names who holds the {m.group(1)}"
    return [answer]


def _holder(obj: str, facts: list[str]) -> str | None:
    """The subject of the supporting fact that mentions the object (`Mary got the milk there.` -> Mary)."""
    for fact in facts:
        if re.search(rf"\b{re.escape(obj)}\b", fact):
            return fact.split()[0]
    return None
