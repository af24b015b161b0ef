"""The judge contract.

Two shapes:

* pointwise: ``score(prompts, completions) -> list[float]`` (one score each)
* pairwise:  ``compare(prompt, a, b) -> Verdict`` (a / b / tie / skip)

A judge may implement both; the ``kind`` given when it is registered says which
(``pointwise``, ``pairwise`` or ``both``). A pointwise judge may return ``None``
for a sample it skips (a person pressing "skip"): that is an answer, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from tui_trainer.engine.errors import TrainerError

Choice = Literal["a", "b", "tie", "skip"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of a pairwise comparison; ``confidence`` in [0, 1] when known."""

    choice: Choice
    confidence: float | None = None

    def __post_init__(self) -> None:
        if self.choice not in ("a", "b", "tie", "skip"):
            raise ValueError(f"verdict must be a, b, tie or skip, got {self.choice!r}")


class JudgeError(Exception):
    """A judge failed (bad output, exception, timeout); the message is one line."""


class JudgeTimeout(JudgeError):
    """A judge call ran past its time limit."""


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message, prefixed by its type unless it is ours."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (JudgeError, TrainerError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class JudgeFailure(TrainerError):
    """The judges failed in a way that must stop the run (``judge_failure: stop``,
    or too many failed calls in a row); the message is one line for the user."""


@dataclass
class JudgeContext:
    """What a judge factory gets besides its options.

    ``step`` is kept current by the judge set before each call, so a judge that
    records labels knows which training step asked. A judge that works through a
    batch one sample at a time may call ``progress(done, total)`` as it goes, so the
    dashboard shows a slow judge working.
    """

    name: str
    run_dir: Path | None = None
    prompter: "Prompter | None" = None
    log: Callable[[str], None] = field(default=lambda message: None)
    seed: int = 0
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[int, int], None] = field(default=lambda done, total: None)


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, prompts: list[str], completions: list[str]) -> list[float]: ...

    def compare(self, prompt: str, a: str, b: str) -> Verdict: ...


class Prompter(Protocol):
    """How a human judge reaches a person: the TUI or a console implements it.

    ``compare`` returns a Verdict; ``rate`` returns a number on ``scale`` or None (skip).
    """

    def compare(self, prompt: str, a: str, b: str, *, judge: str, step: int) -> Verdict: ...

    def rate(self, prompt: str, completion: str, *, judge: str, step: int,
             scale: tuple[int, int] = (0, 9)) -> float | None: ...
