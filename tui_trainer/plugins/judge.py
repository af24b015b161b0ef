"""The judge contract.

Two shapes:

* pointwise: ``score(prompts, completions) -> list[float]`` (one score each)
* pairwise:  ``compare(prompt, a, b) -> Verdict`` (a / b / tie / skip)

A judge may implement both. ``Judge.kind`` says which it prefers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

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
