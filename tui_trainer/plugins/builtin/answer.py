"""The ``answer`` judge: 1.0 when a completion's answer matches the row's answer column, else 0.0.

The column (``column``, default ``answer``) comes from the dataset row of each prompt; every row
must have it (the run stops before it starts, naming the first row without one).

``match``:

* ``number`` (default): the final number of each side is compared exactly (as fractions:
  ``1,000`` = ``1000`` = ``1000.0``; ``3/4`` and ``\\frac{3}{4}`` = ``0.75``). The final number of
  a text is the first number after its last ``####`` (GSM8K's answer line), else the number in
  its last ``\\boxed{...}`` (MATH), else its last number. A reference answer that holds no number
  skips its samples (logged once).
* ``exact``: the final answers are equal as strings (surrounding space stripped).
* ``normalized``: equal after lower-casing, dropping ``$``, ``\\text{...}`` wrappers and the
  trailing full stop, and collapsing white space.
* ``regex``: the answer column holds a Python regular expression, searched in the completion's
  final answer.

The final answer of a text (for ``exact``, ``normalized`` and ``regex``) is what follows its
last ``####``, else the content of its last ``\\boxed{...}``, else the whole text. ``extract``,
a regular expression, replaces that rule for completions: its last match (group 1 when it has
a group) is the completion's answer (no match: score 0).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from tui_trainer.errors import ConfigError, JudgeError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import JudgeContext

MATCHES = ("number", "exact", "normalized", "regex")

OPTIONS = [
    Option("column", str, "answer", "the dataset column holding each row's reference answer"),
    Option("match", str, "number", "number (final number, GSM8K #### / \\boxed{} / last), exact, "
           "normalized (case, space, $ ignored) or regex (the column is a pattern)", choices=MATCHES),
    Option("extract", str, None, "a regex whose last match (group 1 if any) is the completion's answer; "
           "default: after the last ####, else the last \\boxed{}, else the whole text / last number"),
]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces allowed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unclosed: no answer


def final_answer(text: str) -> str:
    """After the last ``####``, else the last ``\\boxed{}``'s content, else the whole text."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    boxed = last_boxed(text)
    return (boxed if boxed is not None else text).strip()


def _to_number(token: str) -> Fraction | None:
    token = token.replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def final_number(text: str) -> Fraction | None:
    """The final number of ``text`` (see the module's docstring), exact; None when it has none."""
    if "####" in text:
        found = _NUMBER.search(_FRAC.sub(r"\1/\2", text.rsplit("####", 1)[1]))
        return _to_number(found.group()) if found else None
    boxed = last_boxed(text)
    if boxed is not None:
        found = _NUMBER.search(_FRAC.sub(r"\1/\2", boxed))
        return _to_number(found.group()) if found else None
    found = _NUMBER.findall(text)
    return _to_number(found[-1]) if found else None


def normalize(text: str) -> str:
    text = _TEXT.sub(r"\1", text).replace("$", "").strip().lower()
    text = " ".join(text.split())
    return text[:-1].rstrip() if text.endswith(".") else text


class AnswerJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        self.name = context.name
        self.log = context.log
        column = str(options["column"] or "").strip()
        if not column:
            raise ConfigError(f"judge {self.name}: option column must name a dataset column")
        self.column = column
        self.columns = (column,)  # every row must have it
        self.match = options["match"]
        self.extract = None
        if options["extract"]:
            try:
                self.extract = re.compile(options["extract"], re.DOTALL)
            except re.error as exc:
                raise ConfigError(f"judge {self.name}: extract {options['extract']!r} is not a valid regex: "
                                  f"{exc}") from None
        self._warned: set[str] = set()

    def _completion_answer(self, completion: str) -> str | None:
        if self.extract is None:
            return None
        found = list(self.extract.finditer(completion))
        if not found:
            return ""
        m = found[-1]
        return (m.group(1) if m.re.groups else m.group()) or ""

    def _skip(self, gold: Any, why: str) -> None:
        key = repr(gold)
        if key not in self._warned:
            self._warned.add(key)
            self.log(f"judge {self.name}: the {self.column} {gold!r:.60} {why}; its samples are skipped")

    def score_one(self, completion: str, gold: Any) -> float | None:
        if gold is None:
            raise JudgeError(f"a sample has no {self.column!r} value")
        gold_text = gold if isinstance(gold, str) else str(gold)
        extracted = self._completion_answer(completion)
        if self.match == "number":
            want = final_number(gold_text)
            if want is None:
                self._skip(gold, "holds no number")
                return None
            got = final_number(completion if extracted is None else extracted)
            return 1.0 if got is not None and got == want else 0.0
        answer = final_answer(completion) if extracted is None else extracted.strip()
        if self.match == "regex":
            try:
                return 1.0 if re.search(gold_text, answer) else 0.0
            except re.error:
                self._skip(gold, "is not a valid regex")
                return None
        want_text = final_answer(gold_text)
        if self.match == "exact":
            return 1.0 if answer == want_text else 0.0
        return 1.0 if normalize(answer) == normalize(want_text) else 0.0

    def score(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float | None]:
        golds = columns.get(self.column)
        if golds is None:
            raise JudgeError(f"no {self.column!r} column was passed: the answer judge scores against the "
                             f"dataset's {self.column} column (train on data that has one)")
        return [self.score_one(c, g) for c, g in zip(completions, golds)]
