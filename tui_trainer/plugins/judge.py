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
from typing import Any, Callable, Protocol, runtime_checkable

from tui_trainer.errors import JudgeError, JudgeFailure, JudgeTimeout, one_line  # noqa: F401  (the plugin API)
from tui_trainer.events import Choice, Verdict  # noqa: F401  (the plugin API)


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
