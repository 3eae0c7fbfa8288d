"""One JSONL format for every task (SPEC §3), its validating reader and writer, and the target-length rule.

A line is one JSON object with exactly these fields: `id` (non-empty string, unique in the file),
`task` (non-empty string), `prompt` (non-empty string, without the `Answer:` template), `targets`
(non-empty list of non-empty strings, `<HALT>` excluded), `answer` (the last target), `hops`
(integer >= 0) and `meta` (object; optional, default `{}`). Such a file loads unchanged with
Hugging Face `datasets.load_dataset("json", data_files=...)`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from rlf.errors import RLFError

log = logging.getLogger(__name__)

HALT = "<HALT>"
TEMPLATE_SUFFIX = "Answer:"  # the end of the default template "{prompt}\nAnswer:"
NUL = b"\x00"
MAX_LISTED = 20  # invalid lines listed in an error message; the rest are counted


@dataclass
class Example:
    """One example: `targets` are the per-loop supervision strings, `<HALT>` not included."""

    id: str
    task: str
    prompt: str
    targets: list[str]
    answer: str
    hops: int
    meta: dict = field(default_factory=dict)


FIELDS = {"id": str, "task": str, "prompt": str, "targets": list, "answer": str, "hops": int, "meta": dict}
REQUIRED = ("id", "task", "prompt", "targets", "answer", "hops")


@dataclass
class LineError:
    """Why one line of a file is invalid."""

    path: str
    line: int  # 1-based; an item number for JSON-array files
    field: str | None
    reason: str
    text: str = ""
    unit: str = "line"  # or "item"

    def detail(self) -> str:
        """The field and reason, without the place."""
        return f"field {self.field!r}: {self.reason}" if self.field else self.reason

    def __str__(self) -> str:
        place = f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path}: {self.unit} {self.line}"
        return f"{place}: {self.detail()}"


@dataclass
class CheckReport:
    """The result of checking a file: its valid examples, every invalid line, and the line count."""

    path: str
    examples: list[Example]
    errors: list[LineError]
    lines: int
    unit: str = "line"

    def counts(self) -> Counter:
        """Valid examples per (task, hops)."""
        return Counter((ex.task, ex.hops) for ex in self.examples)

    def summary(self, limit: int | None = MAX_LISTED) -> str:
        """The invalid lines, one per line; past `limit` only their count."""
        bad_lines = sorted({e.line for e in self.errors})
        head = f"{self.path}: {len(bad_lines)} invalid {self.unit}(s) of {self.lines}"
        shown = self.errors if limit is None else self.errors[:limit]
        rest = len(self.errors) - len(shown)
        return "\n".join([head, *(f"  {e}" for e in shown)] + ([f"  ... and {rest} more"] if rest else []))


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples one JSON object per line (UTF-8, fixed key order), replacing `path` atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RLFError(f"{path}: the directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for ex in examples:
                f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_jsonl(path: str | Path, tokenizer=None, max_tokens: int = 1) -> CheckReport:
    """Validate every line of a JSONL file (and, with a tokenizer, that every target is 1 to `max_tokens` tokens);
    never raises on bad lines."""
    path_str = str(path)
    lines = read_bytes(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line; it does not start a blank one
    valid: list[tuple[int, Example]] = []
    errors: list[LineError] = []
    first_line_of_id: dict[str, int] = {}
    for number, data in enumerate(lines, 1):
        found = _check_line(path_str, number, data)
        if isinstance(found, Example) and found.id in first_line_of_id:
            reason = f"duplicate id {found.id!r} (first on line {first_line_of_id[found.id]})"
            found = [LineError(path_str, number, "id", reason)]
        if isinstance(found, Example):
            first_line_of_id[found.id] = number
            valid.append((number, found))
        else:
            errors += found
    return finish_check(path_str, valid, errors, lines, tokenizer, max_tokens=max_tokens)


def finish_check(
    path: str, valid: list[tuple[int, Example]], errors: list[LineError], raw: list, tokenizer=None, unit: str = "line",
    max_tokens: int = 1,
) -> CheckReport:
    """Add the target-length errors (with a tokenizer), attach each bad line's text, keep the examples on good lines."""
    if tokenizer is not None:
        errors = errors + single_token_errors(path, valid, tokenizer, unit, max_tokens)
    for e in errors:
        text = raw[e.line - 1]
        e.text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
    errors.sort(key=lambda e: e.line)
    bad = {e.line for e in errors}
    return CheckReport(path, [ex for number, ex in valid if number not in bad], errors, len(raw), unit)


def accept(report: CheckReport, skip_invalid: bool = False, reject_path: str | Path | None = None) -> list[Example]:
    """The report's examples if nothing is invalid; else an RLFError listing the invalid lines, or, with
    `skip_invalid=True`, those lines written to `reject_path` as JSONL `{"line", "errors", "text"}` and counted."""
    if skip_invalid and reject_path is None:
        raise RLFError(f"{report.path}: skip_invalid=True needs reject_path, the file that receives the skipped lines")
    if report.lines == 0:
        raise RLFError(f"{report.path}: the file holds no examples")
    if not report.errors:
        return report.examples
    if not skip_invalid:
        raise RLFError(report.summary())
    by_line: dict[int, list[LineError]] = {}
    for e in report.errors:
        by_line.setdefault(e.line, []).append(e)
    with open(reject_path, "w", encoding="utf-8") as f:
        for line, errs in by_line.items():
            record = {report.unit: line, "errors": [e.detail() for e in errs], "text": errs[0].text}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    unit, path = report.unit, report.path
    total = report.lines
    log.warning("%s: skipped %d invalid %s(s) of %d; they are in %s", path, len(by_line), unit, total, reject_path)
    return report.examples


def read_jsonl(
    path: str | Path, tokenizer=None, *, skip_invalid: bool = False, reject_path: str | Path | None = None,
    max_tokens: int = 1,
) -> list[Example]:
    """Read and validate a JSONL file of examples; any invalid line is an RLFError naming file, line, field, reason.

    With a tokenizer, every target must also be one token with a leading space (up to `max_tokens` tokens, the
    model's target_tokens, when that is more than 1). With
    `skip_invalid=True`, invalid lines are written to `reject_path` (required) and counted instead.
    """
    return accept(check_jsonl(path, tokenizer, max_tokens), skip_invalid, reject_path)


def read_bytes(path: str | Path) -> bytes:
    """A data file's bytes, or an RLFError that says why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise RLFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RLFError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise RLFError(f"{path}: permission denied") from None


def target_token_id(tokenizer, text: str) -> int:
    """The one base-vocabulary token of `text` in context (with a leading space), or an RLFError."""
    return target_token_ids(tokenizer, text, 1)[0]


def target_token_ids(tokenizer, text: str, max_tokens: int) -> tuple[int, ...]:
    """The 1 to `max_tokens` base-vocabulary tokens of `text` in context (with a leading space), or an RLFError."""
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    if not 1 <= len(ids) <= max_tokens:
        raise RLFError(f"target {_too_many_tokens(tokenizer, text, ids, max_tokens)}")
    return tuple(ids)


def _check_line(path: str, number: int, data: bytes) -> Example | list[LineError]:
    """The example on one line, or why it is invalid (all the reasons found)."""

    def bad(reason: str, field_name: str | None = None) -> list[LineError]:
        return [LineError(path, number, field_name, reason)]

    if data.endswith(b"\r"):
        data = data[:-1]
    if NUL in data:
        return bad(f"contains a NUL byte at column {data.index(NUL) + 1}")
    if not data.strip():
        return bad("blank line (every line must hold one JSON object)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return bad(f"not valid UTF-8 (byte {e.start + 1})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return bad(f"not JSON: {e.msg} at column {e.colno}")
    if not isinstance(obj, dict):
        return bad(f"not a JSON object but {json_type(obj)}")

    errors = [LineError(path, number, name, "missing") for name in REQUIRED if name not in obj]
    errors += [
        LineError(path, number, name, f"unknown field (the fields are: {', '.join(FIELDS)})")
        for name in obj
        if name not in FIELDS
    ]
    typed = {}  # the fields present with the right type; only these get content checks
    for name, kind in FIELDS.items():
        if name in obj:
            value = obj[name]
            if isinstance(value, kind) and not isinstance(value, bool):
                typed[name] = value
            else:
                errors.append(LineError(path, number, name, f"must be {_kind_name(kind)}, not {json_type(value)}"))

    def err(field_name: str, reason: str) -> None:
        errors.append(LineError(path, number, field_name, reason))

    for name in ("id", "task", "prompt", "answer"):
        if name in typed and "\x00" in typed[name]:
            err(name, "contains a NUL character (\\u0000)")
        elif name in typed and name != "answer" and not typed[name].strip():
            err(name, "is empty")
    if typed.get("prompt", "").rstrip().endswith(TEMPLATE_SUFFIX):
        err("prompt", f"ends with the template's {TEMPLATE_SUFFIX!r}; write the bare prompt, the encoder adds it")
    targets = typed.get("targets")
    if targets == []:
        err("targets", "is empty (at least the answer is needed)")
    for i, t in enumerate(targets or []):
        if not isinstance(t, str):
            err(f"targets[{i}]", f"must be a string, not {json_type(t)}")
        elif "\x00" in t:
            err(f"targets[{i}]", "contains a NUL character (\\u0000)")
        elif not t.strip():
            err(f"targets[{i}]", "is empty")
        elif t == HALT:
            err(f"targets[{i}]", f"is {HALT}; leave it out, the model appends it")
    if targets and isinstance(targets[-1], str) and "answer" in typed and typed["answer"] != targets[-1]:
        err("answer", f"{typed['answer']!r} differs from the last target {targets[-1]!r}")
    if typed.get("hops", 0) < 0:
        err("hops", f"must be >= 0, not {typed['hops']}")
    if errors:
        return errors
    return Example(**{"meta": {}, **obj})


def single_token_errors(path: str, valid: list[tuple[int, Example]], tokenizer, unit: str = "line",
                        max_tokens: int = 1) -> list[LineError]:
    """An error for every target that is not 1 to `max_tokens` tokens with a leading space (each distinct target
    tokenised once)."""
    distinct = sorted({t for _, ex in valid for t in ex.targets})
    if not distinct:
        return []
    encoded = tokenizer([" " + t for t in distinct], add_special_tokens=False)["input_ids"]
    pieces = {t: ids for t, ids in zip(distinct, encoded) if not 1 <= len(ids) <= max_tokens}
    return [
        LineError(path, number, f"targets[{i}]", _too_many_tokens(tokenizer, t, pieces[t], max_tokens), unit=unit)
        for number, ex in valid
        for i, t in enumerate(ex.targets)
        if t in pieces
    ]


def _too_many_tokens(tokenizer, text: str, ids: list[int], max_tokens: int) -> str:
    shown = [tokenizer.decode([i]) for i in ids]
    if max_tokens == 1:
        return f"{text!r} is {len(ids)} tokens with a leading space {shown}, not 1"
    return (f"{text!r} is {len(ids)} tokens with a leading space {shown}, not 1 to {max_tokens} "
            f"(target_tokens={max_tokens})")


def _kind_name(kind: type) -> str:
    return {str: "a string", list: "a list", int: "an integer", dict: "an object"}[kind]


def json_type(value) -> str:
    """How JSON would name the type of `value` (`a string`, `an integer`, `null`, ...)."""
    names = {str: "a string", list: "a list", dict: "an object", bool: "a boolean", int: "an integer"}
    names[float] = "a number"
    return "null" if value is None else names.get(type(value), type(value).__name__)
