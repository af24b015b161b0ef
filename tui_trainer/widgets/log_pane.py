"""The run's log: engine messages, judge errors, checkpoints (capped)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from tui_trainer.widgets.format import printable

MAX_LINES = 1000
LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}
LEVEL_MARK = {"info": " ", "warning": "!", "error": "E"}


class LogPane(RichLog):
    """Each line: time, a one-letter level mark (readable without colour), the message."""

    def __init__(self, *, max_lines: int = MAX_LINES, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=max_lines, min_width=16, wrap=True, markup=False,
                         highlight=False)
        self.plain_lines: list[str] = []
        self._incoming: list[Text] = []
        self._max = max_lines

    def add(self, level: str, message: str, when: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(when if when is not None else time.time()))
        line = f"{stamp} {LEVEL_MARK.get(level, ' ')} {printable(message)}"
        self.plain_lines.append(line)
        if len(self.plain_lines) > self._max:
            del self.plain_lines[: len(self.plain_lines) - self._max]
        self._incoming.append(Text(line, style=LEVEL_STYLE.get(level, "")))
        if len(self._incoming) > self._max:
            del self._incoming[: len(self._incoming) - self._max]

    def sync(self) -> None:
        """Write the lines recorded since the last call."""
        incoming, self._incoming = self._incoming, []
        for text in incoming:
            self.write(text)
