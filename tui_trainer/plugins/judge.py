"""The judge contract.

Two shapes:

* pointwise: ``score(prompts, completions, **columns) -> list[float]`` (one score each)
* pairwise:  ``compare(prompt, a, b) -> Verdict`` (a / b / tie / skip)

Columns: the dataset row's other fields (``answer`` for GSM8K, test cases, ...), one list per
column aligned with ``completions``, as TRL passes them to reward functions. A judge gets the
columns its ``score`` declares: every column when it takes ``**kwargs``, else the keyword
parameters it names after ``prompts, completions`` (a parameter without a default is a column
every row must have: the run stops before it starts, with one line, when one lacks it). A judge
may also list the columns it needs in a ``columns`` attribute (when an option names them).
``score(prompts, completions)`` judges get no columns and keep working unchanged. A row without
a column the judge accepts gives ``None`` in that place.

A judge may implement both; the ``kind`` given when it is registered says which
(``pointwise``, ``pairwise`` or ``both``). A pointwise judge may return ``None``
for a sample it skips (a person pressing "skip"): that is an answer, not an error.
"""

from __future__ import annotations

import inspect
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

    def score(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]: ...

    def compare(self, prompt: str, a: str, b: str) -> Verdict: ...


class Prompter(Protocol):
    """How a human judge reaches a person: the TUI or a console implements it.

    ``compare`` returns a Verdict; ``rate`` returns a number on ``scale`` or None (skip).
    """

    def compare(self, prompt: str, a: str, b: str, *, judge: str, step: int) -> Verdict: ...

    def rate(self, prompt: str, completion: str, *, judge: str, step: int,
             scale: tuple[int, int] = (0, 9)) -> float | None: ...


# names that are never dataset columns in a call (TRL's reward-function keywords)
RESERVED = frozenset({"prompts", "completions", "completion_ids", "trainer_state"})


@dataclass(frozen=True)
class ColumnUse:
    """Which dataset columns a callable takes: ``every`` one (it has ``**kwargs``), or the ``named``
    ones; ``required``: those it names without a default (every row must have them)."""

    every: bool = False
    named: tuple[str, ...] = ()
    required: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return self.every or bool(self.named)

    def plus(self, required: tuple[str, ...] | list[str]) -> "ColumnUse":
        """Also needing ``required`` (a judge's ``columns`` attribute)."""
        extra = tuple(c for c in required if c not in self.required)
        named = self.named + tuple(c for c in extra if c not in self.named)
        return ColumnUse(self.every, named, self.required + extra)


def column_use(fn: Callable[..., Any], skip: int = 2) -> ColumnUse:
    """The columns ``fn`` accepts, read from its signature after its first ``skip`` positional
    parameters (a bound ``score``'s prompts and completions); TRL's own keywords are not columns."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: nothing beyond the two lists
        return ColumnUse()
    every = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skipped = {p.name for p in positional[:skip]}
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in skipped and p.name not in RESERVED]
    return ColumnUse(every, tuple(p.name for p in named),
                     tuple(p.name for p in named if p.default is p.empty))


def judge_columns(judge: Any) -> ColumnUse:
    """The columns a pointwise judge accepts: its ``score`` signature, plus its ``columns``
    attribute (names it needs in every row)."""
    score = getattr(judge, "score", None)
    use = column_use(score) if callable(score) else ColumnUse()
    needed = getattr(judge, "columns", ()) or ()
    if isinstance(needed, str):
        needed = (needed,)
    return use.plus(tuple(str(c) for c in needed))


def columns_for(use: ColumnUse, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The keyword arguments for one call: each accepted column as a list aligned with ``rows``
    (None where a row lacks it); a named column with a default is left out when no row has it."""
    if not use.any:
        return {}
    present: dict[str, None] = {}
    for row in rows:
        present.update(dict.fromkeys(row))
    if use.every:
        names = [c for c in present if c not in RESERVED] + [c for c in use.required if c not in present]
    else:
        names = [c for c in use.named if c in present or c in use.required]
    return {c: [row.get(c) for row in rows] for c in names}
