"""Run progress (a bar, the step count, seconds per step, the run's ETA) and step progress (the
phase of the step in flight, its counts and the step's ETA)."""

from __future__ import annotations

import time
from collections import deque

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

from tui_trainer.widgets.format import format_duration, progress_text


class RunProgress(Horizontal):
    """ETA from the wall time of the last few steps as seen by the UI."""

    WINDOW = 10

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.step = 0
        self.total = 0
        self._marks: deque[tuple[float, int]] = deque(maxlen=self.WINDOW + 1)
        self._shown: tuple = ()

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=None, show_eta=False, show_percentage=True, id="bar")
        yield Static("", id="progress-text")

    def on_mount(self) -> None:
        self.sync()

    def mark_start(self, step: int, total: int, now: float | None = None) -> None:
        """The run (re)started at ``step``: the timing window starts here."""
        self.step, self.total = int(step), int(total)
        self._marks.clear()
        self._marks.append((time.monotonic() if now is None else now, self.step))

    def update_step(self, step: int, total: int | None = None, now: float | None = None) -> None:
        if total:
            self.total = int(total)
        if step != self.step or not self._marks:
            self._marks.append((time.monotonic() if now is None else now, int(step)))
        self.step = int(step)

    def seconds_per_step(self) -> float | None:
        if len(self._marks) < 2:
            return None
        (t0, s0), (t1, s1) = self._marks[0], self._marks[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def eta(self) -> float | None:
        per = self.seconds_per_step()
        if per is None or not self.total:
            return None
        return max(0, self.total - self.step) * per

    def text(self) -> str:
        parts = [f"step {self.step}/{self.total or '?'}"]
        per = self.seconds_per_step()
        if per is not None:
            parts.append(f"{format_duration(per)}/step")
        if self.total and self.step >= self.total:
            parts.append("done")
        else:
            parts.append(f"ETA {format_duration(self.eta())}")
        return " · ".join(parts)

    def sync(self) -> None:
        """Show the recorded step, total and ETA."""
        text = self.text()
        shown = (self.step, self.total, text)
        if shown == self._shown:
            return
        self._shown = shown
        self.query_one(ProgressBar).update(total=self.total or None,
                                           progress=min(self.step, self.total or self.step))
        self.query_one("#progress-text", Static).update(text, layout=False)


class StepProgress(Horizontal):
    """The step in flight, from the engine's ``Progress`` events: phase bar + one line of text."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.latest = None  # the last events.Progress
        self.idle_text = "waiting for the first step…"
        self._shown: tuple = ()

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="step-bar")
        yield Static("", id="step-text")

    def on_mount(self) -> None:
        self.sync()

    def update_progress(self, progress) -> None:
        self.latest = progress

    def clear(self, text: str) -> None:
        """Between steps or when the run ends: no step in flight."""
        self.latest = None
        self.idle_text = text

    def text(self) -> str:
        return progress_text(self.latest) if self.latest is not None else self.idle_text

    def sync(self) -> None:
        p = self.latest
        text = self.text()
        shown = (text, p.done if p else None, p.total if p else None)
        if shown == self._shown:
            return
        self._shown = shown
        bar = self.query_one("#step-bar", ProgressBar)
        if p is None:
            bar.update(total=None, progress=0)
        else:
            bar.update(total=max(p.total, 1), progress=min(p.done, p.total))
        self.query_one("#step-text", Static).update(text, layout=False)
