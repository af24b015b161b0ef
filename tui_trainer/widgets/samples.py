"""The latest samples with their scores.

A fixed-size view (no scrolling container, so a new step repaints only this
widget and never re-lays out the screen): the newest samples fill the box,
up/down move a highlight back through the last ``max_rows``, Enter opens the
highlighted one in full. Text is shown as written, never parsed as markup.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widget import Widget

from tui_trainer.events import Sample
from tui_trainer.widgets.format import format_value, one_line

MAX_ROWS = 200


class SamplesView(Widget, can_focus=True):
    BINDINGS = [
        Binding("up", "move(-1)", "Older", show=False),
        Binding("down", "move(1)", "Newer", show=False),
        Binding("home", "move(-1000000)", "Oldest", show=False),
        Binding("end", "follow", "Newest", show=False),
        Binding("enter", "open", "Show sample", show=False),
    ]

    class Open(Message):
        """Enter on a sample: show it in full."""

        def __init__(self, sample: Sample) -> None:
            super().__init__()
            self.sample = sample

    def __init__(self, *, max_rows: int = MAX_ROWS, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_rows = max_rows
        self.samples: deque[Sample] = deque(maxlen=max_rows)
        self.cursor: int | None = None  # index into samples; None = follow the newest
        self._dirty = False

    @property
    def row_count(self) -> int:
        return len(self.samples)

    def add_samples(self, samples: Iterable[Sample]) -> None:
        """Record ``samples``; ``sync`` shows them."""
        new = list(samples)
        dropped = max(0, len(self.samples) + len(new) - self.max_rows)
        self.samples.extend(new)
        if self.cursor is not None:  # keep the highlight on the same sample as old ones drop off
            self.cursor = max(0, self.cursor - dropped)
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            self._dirty = False
            self.refresh()

    def current(self) -> Sample | None:
        if not self.samples:
            return None
        index = len(self.samples) - 1 if self.cursor is None else min(self.cursor, len(self.samples) - 1)
        return self.samples[index]

    def action_move(self, delta: int) -> None:
        if not self.samples:
            return
        last = len(self.samples) - 1
        index = (last if self.cursor is None else self.cursor) + int(delta)
        self.cursor = None if index >= last else max(0, index)
        self.refresh()

    def action_follow(self) -> None:
        self.cursor = None
        self.refresh()

    def action_open(self) -> None:
        sample = self.current()
        if sample is not None:
            self.post_message(self.Open(sample))

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if width <= 0 or height <= 0:
            return Text("")
        text_width = max(8, width - 14)
        lines = [Text(one_line(f"{'step':>4} {'score':>7}  completion", width), style="bold")]
        rows = max(0, height - 1)
        if not self.samples:
            lines.append(Text(one_line("no samples yet", width), style="dim"))
            return Text("\n").join(lines)
        last = len(self.samples) - 1
        end = last if self.cursor is None else min(self.cursor, last)
        start = max(0, end - rows + 1)
        highlight = self.has_focus or self.cursor is not None
        for i in range(start, end + 1):
            s = self.samples[i]
            body = one_line(s.completion, text_width - (2 if not s.finished else 0))
            line = Text(f"{s.step:>4} {format_value(s.score):>7}  {body}" + ("" if s.finished else " …"))
            line.truncate(width, overflow="ellipsis")  # by cell width: wide characters count twice
            if highlight and i == end:
                line.stylize("reverse")
            lines.append(line)
        return Text("\n").join(lines)
