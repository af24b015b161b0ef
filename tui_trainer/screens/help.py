"""The keys, on one screen (? or F1 opens it; Esc, q or ? closes it)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP_TEXT = """\
tui-trainer keys (keyboard only; no mouse needed)

Everywhere
  ? or F1   this help               F2   installed judge plugins
  ctrl+q    quit (a running run saves a checkpoint first)

Setup
  Tab, shift+Tab   move between fields; Enter presses a button
  ctrl+r    start the run (resumes when the box is ticked)
  ctrl+s    save the config to the YAML path; ctrl+o loads it

Dashboard
  p   pause / resume (takes effect between steps)
  c   save a checkpoint after the current step
  q   quit: stop after the current step, save a checkpoint, exit
  j   open the judging screen
  up, down, Enter   pick a sample and show it in full
  n   new run (after a run has ended)
  t   chat with the trained model (after a run has ended; Esc leaves)
  e   trained vs base: win rate and completions side by side (after a run)

Judging (opens by itself when a human judge asks)
  1 or a    A is better             2 or b   B is better
  t         tie                     s        skip (the sample is dropped)
  0-9       rating for a pointwise question (within its scale)
  Esc       back to the dashboard (the question keeps waiting)

Over SSH, run inside tmux (tmux new -s train; detach: ctrl+b d) so a
long run outlives the connection; if the terminal closes anyway, the
run saves a checkpoint and stops. Without truecolor, set
TEXTUAL_COLOR_SYSTEM=256 (or standard).
"""


class HelpScreen(ModalScreen):
    CSS_PATH = "help.tcss"
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP_TEXT, id="help-text", markup=False)

    def on_mount(self) -> None:
        box = self.query_one("#help-box")
        box.border_title = "help · up/down scroll · Esc close"
        box.focus()

    def action_close(self) -> None:
        self.dismiss()
