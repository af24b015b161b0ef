"""Human judging: the engine's pending question, answered from the keyboard.

Pairwise: 1 or a (A is better), 2 or b (B is better), t tie, s skip.
Pointwise: 0-9 rating (within the question's scale), s skip.
The two completions sit side by side when the terminal is at least 100
columns wide, one above the other when narrower. The answer resolves the
request's future; the engine thread (blocked on it) carries on, and the human
judge writes the label.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui_trainer.events import JudgeRequest, Verdict
from tui_trainer.runner import resolve
from tui_trainer.widgets.format import format_value, one_line, printable

WIDE = 100  # columns from which the completions are shown side by side
RETURN_DELAY = 0.6  # seconds with no question before going back to the dashboard


@dataclass
class JudgeLedger:
    """What the person has decided so far (bounded)."""

    counts: Counter = field(default_factory=Counter)
    rating_sum: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=5))

    def record(self, request: JudgeRequest, answer: Any) -> None:
        if isinstance(answer, Verdict):
            key = answer.choice
        elif answer is None:
            key = "skip"
        else:
            key = "rated"
            self.rating_sum += float(answer)
        self.counts[key] += 1
        shown = {"a": "A", "b": "B", "tie": "tie", "skip": "skip"}.get(key, format_value(answer))
        self.recent.append(f"step {request.step}: {shown}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        c = self.counts
        text = f"decided {self.total}: A {c['a']} · B {c['b']} · tie {c['tie']} · skip {c['skip']}"
        if c["rated"]:
            text += f" · rated {c['rated']} (mean {self.rating_sum / c['rated']:.2f})"
        return text


def parse_rating(key: str, scale: tuple[int, int]) -> int | None:
    """The rating for digit ``key`` on ``scale`` (inclusive), or None if off the scale."""
    if len(key) != 1 or not key.isdigit():
        return None
    value = int(key)
    lo, hi = int(scale[0]), int(scale[1])
    return value if lo <= value <= hi else None


class JudgingScreen(Screen):
    """One question at a time; the answer resolves the request's future (the engine waits on it)
    and goes up as :class:`JudgingScreen.Answered`."""

    class Answered(Message):
        """A question was answered (``resolved``: by this answer, not already by a stop)."""

        def __init__(self, request: JudgeRequest, answer: Any, resolved: bool) -> None:
            super().__init__()
            self.request, self.answer, self.resolved = request, answer, resolved

    CSS_PATH = "judging.tcss"
    BINDINGS = [
        Binding("1,a", "choose('a')", "A better", key_display="1/a"),
        Binding("2,b", "choose('b')", "B better", key_display="2/b"),
        Binding("t", "choose('tie')", "Tie"),
        Binding("s", "skip", "Skip"),
        *[Binding(str(d), f"rate({d})", f"rate {d}", show=False) for d in range(10)],
        Binding("escape", "back", "Dashboard"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.request: JudgeRequest | None = None
        self._return_timer: Any = None

    def compose(self) -> ComposeResult:
        yield Static("", id="judge-status", markup=False)
        with VerticalScroll(id="judge-prompt"):
            yield Static("", id="prompt-text", markup=False)
        with Container(id="judge-choices"):
            with VerticalScroll(id="choice-a", classes="choice"):
                yield Static("", id="text-a", markup=False)
            with VerticalScroll(id="choice-b", classes="choice"):
                yield Static("", id="text-b", markup=False)
        yield Static("", id="judge-keys", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#judge-prompt").border_title = "prompt"
        self._apply_width(self.app.size.width)
        self.show_current()

    def on_resize(self, event: Any) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self.set_class(width >= WIDE, "wide")

    @property
    def wide(self) -> bool:
        return self.has_class("wide")

    # ------------------------------------------------------------------ showing
    def show_current(self) -> None:
        """Show the oldest open question (or that none is waiting)."""
        app = self.app
        self.request = app.current_request()
        request = self.request
        if self._return_timer is not None and request is not None:
            self._return_timer.stop()
            self._return_timer = None
        choice_b = self.query_one("#choice-b")
        if request is None:
            self.query_one("#prompt-text", Static).update("No question waiting: the engine is "
                                                          "generating. Esc goes back to the dashboard.")
            self.query_one("#text-a", Static).update("")
            self.query_one("#text-b", Static).update("")
            self.query_one("#choice-a").border_title = ""
            choice_b.display = False
            keys = "Esc dashboard"
        elif request.kind == "pairwise":
            self.query_one("#prompt-text", Static).update(printable(request.prompt))
            self.query_one("#text-a", Static).update(printable(request.a))
            self.query_one("#text-b", Static).update(printable(request.b or ""))
            self.query_one("#choice-a").border_title = "A (1 / a)"
            choice_b.border_title = "B (2 / b)"
            choice_b.display = True
            keys = "1/a: A is better · 2/b: B is better · t: tie · s: skip · Esc: dashboard"
        else:
            lo, hi = request.scale
            self.query_one("#prompt-text", Static).update(printable(request.prompt))
            self.query_one("#text-a", Static).update(printable(request.a))
            self.query_one("#choice-a").border_title = f"completion: rate {lo}-{hi}"
            choice_b.display = False
            keys = f"{lo}-{min(int(hi), 9)}: rating · s: skip · Esc: dashboard"
        self.query_one("#judge-keys", Static).update(keys)
        self.query_one("#judge-status", Static).update(self.status_text())
        for pane in ("#judge-prompt", "#choice-a", "#choice-b"):
            self.query_one(pane).scroll_home(animate=False)
        self.refresh_bindings()

    def status_text(self) -> str:
        app = self.app
        request = self.request
        waiting = app.waiting_count()
        head = (f"judge {request.judge} · step {request.step} · {request.kind}"
                if request is not None else "human judge")
        parts = [head, f"{waiting} waiting", app.ledger.summary()]
        if app.ledger.recent:
            parts.append("last " + one_line(app.ledger.recent[-1], 24))
        return " · ".join(parts)

    # ------------------------------------------------------------------ keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        request = self.request
        if action == "choose":
            return request is not None and request.kind == "pairwise"
        if action == "rate":
            return (request is not None and request.kind == "pointwise"
                    and parse_rating(str(parameters[0]), request.scale) is not None)
        if action == "skip":
            return request is not None
        return True

    def action_choose(self, choice: str) -> None:
        self._answer(Verdict(choice))

    def action_rate(self, value: int) -> None:
        self._answer(float(value))

    def action_skip(self) -> None:
        if self.request is not None:
            self._answer(Verdict("skip") if self.request.kind == "pairwise" else None)

    def _answer(self, answer: Any) -> None:
        request = self.request
        if request is None:
            return
        # the engine thread waits on this future: answer it now; the app keeps the books
        self.post_message(self.Answered(request, answer, resolve(request, answer)))
        self.show_current()
        if self.request is None and self._return_timer is None:
            self._return_timer = self.set_timer(RETURN_DELAY, self._maybe_return)

    def _maybe_return(self) -> None:
        self._return_timer = None
        if self.app.current_request() is None and self.app.screen is self:
            self.app.pop_screen()

    def action_back(self) -> None:
        self.app.pop_screen()
