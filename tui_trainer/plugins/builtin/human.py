"""The ``human`` judge: a person answers through a Prompter.

The TUI implements the Prompter with its judging screen; :class:`ConsolePrompter`
is the headless one (prints the prompt and the completions, reads an answer
from standard input). The judge randomises which completion is shown first,
maps the answer back to a / b, and appends every verdict to the run's
``labels.jsonl`` (see labels.py).
"""

from __future__ import annotations

import random
import sys
from typing import Any, TextIO

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.builtin.labels import append_label, labels_path
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import JudgeContext, JudgeError, JudgeFailure, Prompter, Verdict
from tui_trainer.text import printable

OPTIONS = [
    Option("scale_min", int, 0, "lowest rating (a digit)"),
    Option("scale_max", int, 9, "highest rating (a digit)"),
    Option("shuffle", bool, True, "show the two completions in random order"),
    Option("labels", bool, True, "append every answer to labels.jsonl in the run directory"),
]

_SWAP = {"a": "b", "b": "a", "tie": "tie", "skip": "skip"}


class HumanJudge:
    interactive = True  # no time limit: a person may take a while

    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        self.name = context.name
        self.context = context
        lo, hi = options["scale_min"], options["scale_max"]
        if not (0 <= lo < hi <= 9):
            raise ConfigError(f"judge {self.name}: need 0 <= scale_min < scale_max <= 9, got {lo}..{hi}")
        self.scale = (lo, hi)
        self.shuffle = options["shuffle"]
        self.rng = random.Random(context.seed)
        prompter = context.prompter
        if prompter is None:
            if not sys.stdin or not sys.stdin.isatty():
                raise ConfigError(f"judge {self.name} needs a person: run the app, or train --headless "
                                  "in a terminal")
            prompter = ConsolePrompter()
        self.prompter: Prompter = prompter
        self.labels = labels_path(context.run_dir) if options["labels"] and context.run_dir else None

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        swap = self.shuffle and self.rng.random() < 0.5
        first, second = (b, a) if swap else (a, b)
        shown = self.prompter.compare(prompt, first, second, judge=self.name, step=self.context.step)
        if not isinstance(shown, Verdict):
            raise JudgeError(f"the prompter returned {type(shown).__name__} instead of a Verdict")
        verdict = Verdict(_SWAP[shown.choice], shown.confidence) if swap else shown
        self._record({"kind": "pairwise", "prompt": prompt, "a": a, "b": b,
                      "shown": ["b", "a"] if swap else ["a", "b"], "choice": verdict.choice})
        return verdict

    def score(self, prompts: list[str], completions: list[str]) -> list[float | None]:
        lo, hi = self.scale
        out: list[float | None] = []
        for prompt, completion in zip(prompts, completions):
            rating = self.prompter.rate(prompt, completion, judge=self.name, step=self.context.step,
                                        scale=self.scale)
            if rating is not None and not (lo <= float(rating) <= hi):
                raise JudgeError(f"the prompter returned rating {rating!r} outside {lo}..{hi}")
            self._record({"kind": "rating", "prompt": prompt, "a": completion, "b": None, "shown": ["a"],
                          "choice": "skip" if rating is None else "rate",
                          "rating": None if rating is None else float(rating), "scale": [lo, hi]})
            out.append(None if rating is None else (float(rating) - lo) / (hi - lo))
        return out

    def _record(self, fields: dict[str, Any]) -> None:
        if self.labels is not None:
            append_label(self.labels, {"step": self.context.step, "judge": self.name, **fields})


class ConsolePrompter:
    """Asks on the terminal: prints with rich, reads answers from ``stdin``.

    Pairwise: 1 or a (first shown), 2 or b (second shown), t (tie), s (skip).
    Ratings: a digit on the scale, or s (skip).
    """

    def __init__(self, console: Any = None, stdin: TextIO | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.stdin = stdin

    def compare(self, prompt: str, a: str, b: str, *, judge: str, step: int) -> Verdict:
        from rich.panel import Panel
        from rich.text import Text

        self._header(prompt, judge, step)
        self.console.print(Panel(Text(printable(a)), title="1", title_align="left", border_style="cyan"))
        self.console.print(Panel(Text(printable(b)), title="2", title_align="left", border_style="magenta"))
        answers = {"1": "a", "a": "a", "2": "b", "b": "b", "t": "tie", "tie": "tie", "s": "skip", "skip": "skip"}
        while True:
            reply = self._read("Better: 1 or 2 (a/b), t = tie, s = skip > ")
            if reply in answers:
                return Verdict(answers[reply])
            self.console.print("Please answer 1, 2, a, b, t or s.")

    def rate(self, prompt: str, completion: str, *, judge: str, step: int,
             scale: tuple[int, int] = (0, 9)) -> float | None:
        from rich.panel import Panel
        from rich.text import Text

        lo, hi = scale
        self._header(prompt, judge, step)
        self.console.print(Panel(Text(printable(completion)), title="completion", title_align="left", border_style="cyan"))
        while True:
            reply = self._read(f"Rate {lo}-{hi}, s = skip > ")
            if reply in ("s", "skip"):
                return None
            if reply.isdigit() and lo <= int(reply) <= hi:
                return float(reply)
            self.console.print(f"Please answer a number from {lo} to {hi}, or s.")

    def _header(self, prompt: str, judge: str, step: int) -> None:
        from rich.panel import Panel
        from rich.text import Text

        self.console.print(Panel(Text(printable(prompt)), title=Text(printable(f"prompt  (judge {judge}, step {step})")),
                                 title_align="left", border_style="bold"))

    def _read(self, question: str) -> str:
        self.console.print(question, end="")
        stream = self.stdin or sys.stdin
        line = stream.readline() if stream is not None else ""
        if not line:
            raise JudgeFailure("the human judge got no answer: standard input is closed")
        if not _isatty(stream):  # a terminal echoes the answer and its newline; a pipe does not
            self.console.print(printable(line.strip()), markup=False)
        return line.strip().lower()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
