"""What a task sampler returns, and the small helpers the samplers share."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlf.errors import RLFError


@dataclass
class Sample:
    """One generated problem: statements (joined with spaces), the question, the per-loop targets."""

    statements: list[str]
    question: str
    targets: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The prompt text, without the template (the encoder applies `"{prompt}\\nAnswer:"`)."""
        return " ".join([*self.statements, self.question])


def article(word: str) -> str:
    """`a` or `an` before `word`."""
    return "an" if word[0].lower() in "aeiou" else "a"


def check_count(task: str, option: str, value, low: int = 0) -> int:
    """An integer option of at least `low`, else an RLFError naming the task and option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RLFError(f"{task}: option {option}={value!r} must be an integer >= {low}")
    return value


def check_pool(task: str, what: str, needed: int, pool: tuple | list, hint: str = "") -> None:
    """Fail clearly when a pool is too small for the requested hops/distractors."""
    if needed > len(pool):
        raise RLFError(
            f"{task}: needs {needed} distinct {what} but the tokenizer gives only {len(pool)} single-token ones"
            + (f"; {hint}" if hint else "")
        )
