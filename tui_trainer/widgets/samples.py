"""The latest samples with their scores (a capped table; Enter shows one in full)."""

from __future__ import annotations

from collections import deque
from typing import Iterable

from rich.text import Text
from textual.widgets import DataTable

from tui_trainer.events import Sample
from tui_trainer.widgets.format import format_value, one_line

MAX_ROWS = 200


class SamplesTable(DataTable):
    """Newest samples at the bottom; the oldest rows drop off past ``max_rows``."""

    def __init__(self, *, max_rows: int = MAX_ROWS, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.max_rows = max_rows
        self.samples: deque[tuple[str, Sample]] = deque()
        self._next_key = 0

    def on_mount(self) -> None:
        self.add_column("step", width=4, key="step")
        self.add_column("score", width=7, key="score")
        self.add_column("completion", width=60, key="completion")
        self.add_column("prompt", width=30, key="prompt")

    def add_samples(self, samples: Iterable[Sample]) -> None:
        follow = self.cursor_row >= self.row_count - 1
        for sample in samples:
            key = str(self._next_key)
            self._next_key += 1
            mark = "" if sample.finished else " …"
            # Text cells: a completion is shown as written, never parsed as markup
            self.add_row(str(sample.step), format_value(sample.score),
                         Text(one_line(sample.completion, 60) + mark), Text(one_line(sample.prompt, 30)),
                         key=key)
            self.samples.append((key, sample))
            while len(self.samples) > self.max_rows:
                old_key, _ = self.samples.popleft()
                self.remove_row(old_key)
        if follow and self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)

    def sample_at_cursor(self) -> Sample | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        for k, sample in self.samples:
            if k == key:
                return sample
        return None
