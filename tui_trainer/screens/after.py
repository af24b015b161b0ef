"""The "after" view: the ended run's trained policy against its base model (``e`` on the dashboard).

The evaluation (evalrun.evaluate_run: held-out prompts, the run's own judges, eval.json + eval.md
written to the run directory) runs on the engine thread (``Runner.submit``); progress and the result
come back through ``call_from_thread``. Shown: the win rate of trained over base with its 95% Wilson
interval, each judge's mean scores, and the completions side by side. Esc goes back.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui_trainer.widgets.format import printable

CELL = 60  # characters of a completion shown in the table (the full text is in eval.md / eval.json)


def _evaluate(run_dir: str, n: int, progress) -> Any:  # runs on the engine thread
    from tui_trainer.evalrun import evaluate_run

    return evaluate_run(run_dir, n=n, progress=progress)[0]


def summary_text(result: Any) -> str:
    lo, hi = result.ci95
    rate = "n/a (every comparison skipped)" if result.win_rate is None else f"{result.win_rate:.3f}"
    lines = [f"win rate of trained over base: {rate}   95% CI [{lo:.3f}, {hi:.3f}]   n = {result.n}",
             f"wins {result.count('win')} · losses {result.count('loss')} · ties {result.count('tie')} · "
             f"skipped {result.count('skip')} (ties count half)",
             f"prompts: {result.info.get('data', '')}"]
    for key, v in result.per_judge.items():
        t, b = v.get("trained"), v.get("base")
        lines.append(f"{key}: mean score trained {'-' if t is None else f'{t:.4g}'}, "
                     f"base {'-' if b is None else f'{b:.4g}'}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    flat = " ".join(printable(text).split())
    return flat if len(flat) <= CELL else flat[:CELL - 1] + "…"


class AfterScreen(Screen):
    CSS_PATH = "after.tcss"
    BINDINGS = [Binding("escape", "leave", "Back")]

    def __init__(self, runner: Any, run_dir: str, *, n: int = 20) -> None:
        super().__init__()
        self.runner = runner
        self.run_dir = str(run_dir)
        self.n = n
        self.result: Any = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"trained vs base · {self.run_dir} · starting…", id="after-status", markup=False)
        yield Static("", id="after-summary", markup=False)
        yield DataTable(id="after-table", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("prompt", "trained", "base", "outcome")

        def progress(phase: str, done: int, total: int) -> None:  # engine thread
            try:
                self.app.call_from_thread(self._status, f"trained vs base · {phase} {done}/{total}")
            except Exception:  # noqa: BLE001  the app has gone
                pass

        def back(future: Future) -> None:
            try:
                self.app.call_from_thread(self._done, future)
            except Exception:  # noqa: BLE001
                pass

        self.runner.submit(lambda: _evaluate(self.run_dir, self.n, progress)).add_done_callback(back)

    def _status(self, text: str) -> None:
        self.query_one("#after-status", Static).update(text)

    def _done(self, future: Future) -> None:
        from tui_trainer.errors import one_line

        try:
            self.result = future.result()
        except Exception as exc:  # noqa: BLE001  shown, the app stays usable
            self.error = one_line(exc)
            self._status(f"trained vs base · failed: {self.error}")
            return
        r = self.result
        self._status(f"trained vs base · {r.info.get('checkpoint', '')} · written: eval.json, eval.md")
        self.query_one("#after-summary", Static).update(summary_text(r))
        table = self.query_one(DataTable)
        for p, a, b, o in zip(r.prompts, r.trained, r.base, r.outcomes):
            table.add_row(_cell(p), _cell(a), _cell(b), o)

    def action_leave(self) -> None:
        self.dismiss()
