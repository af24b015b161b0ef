"""One sample in full: prompt, completion, scores (Esc closes)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui_trainer.events import Sample
from tui_trainer.widgets.format import format_value, printable


def sample_text(sample: Sample) -> str:
    scores = ", ".join(f"{k} {format_value(v)}" for k, v in sample.scores.items())
    lines = [f"step {sample.step} · score {format_value(sample.score)}"
             + (f" ({scores})" if scores else "")
             + ("" if sample.finished else " · no EOS"),
             "", "PROMPT", sample.prompt, "", "COMPLETION", sample.completion]
    return printable("\n".join(lines))


class SampleScreen(ModalScreen):
    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, sample: Sample) -> None:
        super().__init__()
        self.sample = sample

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(sample_text(self.sample), id="sample-text", markup=False)

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "sample"
        self.query_one("#help-box").focus()

    def action_close(self) -> None:
        self.dismiss()
