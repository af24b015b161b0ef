"""A metric panel: the current value of one metric and a plot of its recent history."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from tui_trainer.widgets.format import finite, format_value

DEFAULT_HISTORY = 1000


class MetricPanel(Vertical):
    """Shows ``key``'s latest value, its change, and a history plot.

    ``push`` only records the value; ``sync`` shows it (value line and plot) and
    is called by the dashboard on a timer, so that a fast run does not spend
    its time drawing. The history is capped at ``maxlen`` points.
    """

    def __init__(self, key: str, title: str, *, maxlen: int = DEFAULT_HISTORY,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.key = key
        self.title = title
        self.history: deque[tuple[int, float | None]] = deque(maxlen=maxlen)
        self._dirty = False
        self._shown = ""
        self.border_title = title

    def compose(self) -> ComposeResult:
        yield Static("-", classes="metric-value")
        yield PlotextPlot(classes="metric-plot")

    def on_mount(self) -> None:
        plt = self.query_one(PlotextPlot).plt
        plt.xfrequency(0)
        plt.yfrequency(2)
        plt.frame(False)
        self.sync()

    @property
    def value(self) -> float | None:
        """The latest value (None before the first step or when the step had none)."""
        return self.history[-1][1] if self.history else None

    @property
    def values(self) -> list[float | None]:
        return [v for _, v in self.history]

    def push(self, step: int, value: object) -> None:
        self.history.append((int(step), finite(value)))
        self._dirty = True

    def clear(self) -> None:
        self.history.clear()
        self._dirty = True

    def value_text(self) -> str:
        """The value line as shown: the latest value and its change from the step before."""
        if not self.history:
            return "-"
        current = self.value
        text = format_value(current)
        if len(self.history) >= 2 and current is not None:
            previous = self.history[-2][1]
            if previous is not None:
                delta = current - previous
                arrow = "+" if delta > 0 else ("-" if delta < 0 else "=")
                text += f"  {arrow}{format_value(abs(delta))}" if delta else "  ="
        return text

    def sync(self) -> bool:
        """Show what arrived since the last call (value line and plot); True if anything changed."""
        if not self._dirty:
            return False
        self._dirty = False
        text = self.value_text()
        if text != self._shown:
            self._shown = text
            self.query_one(".metric-value", Static).update(text, layout=False)
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        points = [(s, v) for s, v in self.history if v is not None]
        if points:
            xs, ys = zip(*points)
            plt.plot(list(xs), list(ys), marker="braille")
        plot.refresh()
        return True
