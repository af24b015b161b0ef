"""The ``rules`` judge: scores from simple checks, combined with weights.

Components (each scores a completion in [0, 1]; the callable may return any float):

* ``length``: ``target_length`` words (or chars, ``length_unit``); 1 within
  ``length_tolerance`` of the target, falling linearly to 0 at twice the target.
* ``require``: the fraction of ``require`` patterns present.
* ``forbid``: 1 when none of the ``forbid`` patterns is present, else the
  fraction absent.
* ``json``: 1 when the completion parses as JSON (a ```json fence is allowed).
* ``callable``: ``func(prompt, completion) -> float`` named by a dotted path (or
  ``path/to/file.py:func``). A function that names more parameters
  (``func(prompt, completion, answer)``) or takes ``**columns`` also gets that
  sample's dataset columns, as single values.

Patterns are plain keywords (case-insensitive, whole words) unless ``regex`` is
on. The score is the weighted mean of the components that are set; ``weights``
(e.g. ``{"length": 1, "json": 2}``) defaults to equal weights. With no rule set,
the judge scores a length target of 20 words (tolerance 5).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import ColumnUse, JudgeContext, column_use

COMPONENTS = ("length", "require", "forbid", "json", "callable")
DEFAULT_TARGET, DEFAULT_TOLERANCE = 20, 5

OPTIONS = [
    Option("target_length", int, None, "target length (0 or unset: no length rule)"),
    Option("length_unit", str, "words", "unit of target_length", choices=("words", "chars")),
    Option("length_tolerance", int, None, "full score within this distance of the target (default: 0, "
           f"or {DEFAULT_TOLERANCE} with the built-in default target)"),
    Option("require", list, None, "keywords/patterns that should be present"),
    Option("forbid", list, None, "keywords/patterns that should be absent"),
    Option("regex", bool, False, "treat require/forbid as Python regular expressions"),
    Option("ignore_case", bool, True, "case-insensitive matching"),
    Option("json", bool, False, "reward completions that are valid JSON"),
    Option("callable", str, None, "a Python function 'pkg.mod:func' or 'file.py:func' called as "
           "func(prompt, completion) -> float; parameters it names after those get the row's columns"),
    Option("weights", dict, None, "weight per component: length, require, forbid, json, callable"),
]

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class RulesJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        self.name = context.name
        o = options
        flags = re.IGNORECASE if o["ignore_case"] else 0
        self.rules: dict[str, Callable[..., float]] = {}
        self.takes = ColumnUse()  # the dataset columns the callable takes
        target, tolerance = o["target_length"], o["length_tolerance"]
        nothing_set = not any(o[k] for k in ("target_length", "require", "forbid", "json", "callable"))
        if nothing_set and target is None:
            target = DEFAULT_TARGET
            tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
        if target:
            if target < 0 or (tolerance or 0) < 0:
                raise ConfigError(f"judge {self.name}: target_length and length_tolerance must be >= 0")
            self.rules["length"] = _length_rule(target, tolerance or 0, o["length_unit"])
        if o["require"]:
            pats = self._patterns(o["require"], o["regex"], flags, "require")
            self.rules["require"] = lambda p, c: sum(1 for r in pats if r.search(c)) / len(pats)
        if o["forbid"]:
            bans = self._patterns(o["forbid"], o["regex"], flags, "forbid")
            self.rules["forbid"] = lambda p, c: sum(1 for r in bans if not r.search(c)) / len(bans)
        if o["json"]:
            self.rules["json"] = lambda p, c: 1.0 if _is_json(c) else 0.0
        if o["callable"]:
            from tui_trainer.plugins.manager import import_object

            func = import_object(o["callable"])
            if not callable(func):
                raise ConfigError(f"judge {self.name}: {o['callable']!r} is not callable")
            self.takes = column_use(func)
            self.rules["callable"] = lambda p, c, **cols: float(func(p, c, **cols))
        weights = dict(o["weights"] or {})
        for key, w in weights.items():
            if key not in COMPONENTS:
                raise ConfigError(f"judge {self.name}: weights has unknown component {key!r} "
                                  f"(components: {', '.join(COMPONENTS)})")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ConfigError(f"judge {self.name}: weight for {key} must be a number, got {w!r}")
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.rules}
        total = sum(self.weights.values())
        if total <= 0:
            raise ConfigError(f"judge {self.name}: the weights of the rules in use must sum to more than 0")
        self.total = total
        self.columns = self.takes.required  # every row must have these (checked before the run starts)

    def _patterns(self, items: list, regex: bool, flags: int, option: str) -> list[re.Pattern]:
        out = []
        for item in items:
            text = str(item)
            if not text:
                raise ConfigError(f"judge {self.name}: {option} has an empty pattern")
            try:
                out.append(re.compile(text if regex else rf"(?<!\w){re.escape(text)}(?!\w)", flags))
            except re.error as exc:
                raise ConfigError(f"judge {self.name}: {option} pattern {text!r} is not a valid regex: {exc}") from None
        return out

    def components(self, prompt: str, completion: str, **columns: Any) -> dict[str, float]:
        """Each rule's score for one sample; ``columns``: that sample's dataset columns."""
        out = {}
        for k, rule in self.rules.items():
            out[k] = rule(prompt, completion, **columns) if k == "callable" else rule(prompt, completion)
        return out

    def score(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        take = {k: v for k, v in columns.items() if self.takes.every or k in self.takes.named}
        out = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            parts = self.components(p, c, **{k: v[i] for k, v in take.items()})
            out.append(sum(self.weights[k] * v for k, v in parts.items()) / self.total)
        return out


def _length_rule(target: int, tolerance: int, unit: str) -> Callable[[str, str], float]:
    def rule(prompt: str, completion: str) -> float:
        n = len(completion.split()) if unit == "words" else len(completion)
        excess = max(0, abs(n - target) - tolerance)
        return max(0.0, 1.0 - excess / target)

    return rule


def _is_json(text: str) -> bool:
    text = text.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    if not text:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
