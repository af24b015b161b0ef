"""The dashboard's secondary row: small labelled values and the step-time split."""

from __future__ import annotations

from textual.widgets import Static

from tui_trainer.widgets.format import finite, format_value


class Stat(Static):
    """One label over one value (two lines, no border)."""

    def __init__(self, key: str, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="stat")
        self.key = key
        self.label = label
        self.value: float | None = None
        self._shown = ""

    def on_mount(self) -> None:
        self.sync()

    def set_value(self, value: object) -> None:
        """Record ``value``; ``sync`` shows it."""
        self.value = finite(value)

    def sync(self) -> None:
        text = f"{self.label}\n{format_value(self.value)}"
        if text != self._shown:
            self._shown = text
            self.update(text, layout=False)


# (metric key, short label, bar character): distinct characters so the split
# reads without colour.
PHASES = (("time_rollout", "r", "█"), ("time_judge", "j", "▒"), ("time_update", "u", "░"))


def _short(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


class StepTimeSplit(Static):
    """Where a step's time went: rollout / judge / update, as a bar and seconds."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="stat step-split")
        self.times: dict[str, float | None] = {k: None for k, _, _ in PHASES}
        self._shown = ""

    def on_mount(self) -> None:
        self.sync()

    def set_times(self, values: dict[str, object]) -> None:
        """Record the step's phase times; ``sync`` shows them."""
        for key, _, _ in PHASES:
            if key in values:
                self.times[key] = finite(values[key])

    def fractions(self) -> dict[str, float]:
        known = {k: max(0.0, v) for k, v in self.times.items() if v is not None}
        total = sum(known.values())
        if total <= 0:
            return {}
        return {k: v / total for k, v in known.items()}

    def bar(self, width: int) -> str:
        """A ``width``-cell bar, each phase a run of its own character."""
        fracs = self.fractions()
        if not fracs or width <= 0:
            return "·" * max(0, width)
        cells: list[str] = []
        used = 0
        for i, (key, _, char) in enumerate(PHASES):
            if key not in fracs:
                continue
            n = width - used if i == len(PHASES) - 1 else int(round(fracs[key] * width))
            n = max(0, min(n, width - used))
            cells.append(char * n)
            used += n
        return ("".join(cells) + "·" * width)[:width]

    def text(self) -> str:
        legend = "".join(f"{char}{label}" for _, label, char in PHASES)
        times = "/".join(_short(self.times[key]) for key, _, _ in PHASES)
        width = max(8, (self.size.width or 30))
        return f"{legend} {times}s\n" + self.bar(width)

    def sync(self) -> None:
        text = self.text()
        if text != self._shown:
            self._shown = text
            self.update(text, layout=False)

    def on_resize(self) -> None:
        self.sync()
