"""The plugin surface: one pluggy hook, ``register_judges(register)``.

A plugin is any module or object reachable through an entry point in the group
``tui_trainer.judges`` that implements the hook::

    from tui_trainer.plugins import Option, hookimpl

    @hookimpl
    def register_judges(register):
        register("length", LengthJudge, description="rewards answers near a length",
                 options=[Option("target", int, 50, "target length in words")],
                 kind="pointwise")

``register(name, factory, description=..., options=[...], kind=...)``:

* ``factory(options, context)`` builds the judge. ``options`` is a dict holding
  every declared option (defaults filled in, values coerced to the declared
  type); ``context`` is a :class:`tui_trainer.plugins.judge.JudgeContext`
  (run directory, prompter, log callable, seed, current step).
* ``kind`` is ``"pointwise"`` (the judge has ``score``), ``"pairwise"`` (it has
  ``compare``) or ``"both"``.

This module imports nothing heavy: plugin authors import it at their import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import pluggy

PROJECT = "tui_trainer"
ENTRY_POINT_GROUP = "tui_trainer.judges"
KINDS = ("pointwise", "pairwise", "both")
OPTION_TYPES = (str, int, float, bool, list, dict)

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class Option:
    """One judge option: ``Option(name, type, default, help)``.

    ``type`` is one of str, int, float, bool, list, dict. ``default=None`` means
    "unset" (the judge decides). ``choices`` limits the values; ``aliases`` are
    other names accepted in a config (e.g. ``judge_system`` for ``system``).
    """

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"option name must be an identifier, got {self.name!r}")
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: type must be one of str, int, float, bool, list, dict")


class Register(Protocol):
    def __call__(self, name: str, factory: Callable[..., Any], *, description: str = "",
                 options: list[Option] | tuple[Option, ...] = (), kind: str = "pointwise") -> None: ...


class JudgeSpecs:
    """The hook specifications (pluggy collects the methods marked ``@hookspec``)."""

    @hookspec
    def register_judges(self, register: Register) -> None:
        """Call ``register(name, factory, description=..., options=[...], kind=...)``
        once for each judge this plugin provides."""
