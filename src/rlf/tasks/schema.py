"""One JSONL format for every task (SPEC §3) and the single-token rule for targets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlf.errors import RLFError


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


def write_jsonl(examples, path: str | Path) -> None:
    """Write examples one JSON object per line (UTF-8, stable key order)."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a JSONL file of examples; errors name the file, line and field."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                d = json.loads(line)
                out.append(Example(**d))
            except (json.JSONDecodeError, TypeError) as e:
                raise RLFError(f"{path}:{n}: {e}") from None
    return out


def target_token_id(tokenizer, text: str) -> int:
    """The one base-vocabulary token of `text` in context (with a leading space), or an RLFError."""
    ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise RLFError(f"target {text!r} is {len(ids)} tokens with a leading space, not 1")
    return ids[0]
