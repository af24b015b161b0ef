"""The live training dashboard.

Top: reward (score mean), KL and clip fraction, each its value and history plot.
Then entropy, value loss, approx KL, response length, generation tok/s and the
step-time split; the run's progress bar with its ETA; the step in flight (phase,
counts, the step's ETA; between steps the last step's time and samples/s); the
latest samples and the log.
The app feeds it engine events and calls ``flush`` from its redraw timer (about once a
second however fast the steps come, and at once after a key); the screen never reads
engine state. Keys go up as a :class:`DashboardScreen.Command` message, readiness as
:class:`DashboardScreen.Ready`: the screen never calls into the app or writes to it.
"""

from __future__ import annotations

import math

from collections import deque

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui_trainer.config import Config
from tui_trainer.events import CheckpointSaved, Progress, RunState, Sample, StepMetrics
from tui_trainer.widgets.format import slowest_rank_text
from tui_trainer.widgets.log_pane import LogPane
from tui_trainer.widgets.metric_panel import MetricPanel
from tui_trainer.widgets.progress import RunProgress, StepProgress
from tui_trainer.widgets.samples import SamplesView
from tui_trainer.widgets.stats import Stat, StepTimeSplit

# (metric key, label) for the main panels and the secondary row.
MAIN_PANELS = (("score_mean", "reward"), ("kl", "KL"), ("clip_fraction", "clip fraction"))
SECONDARY = (("entropy", "entropy"), ("value_loss", "value loss"), ("approx_kl", "approx KL"),
             ("response_length", "resp len"), ("generation_tokens_per_second", "gen tok/s"))
# a reward judge learning from the person (learn_from: human) reports <judge>/<name>; shown on the step line
# (labels so far, the reward model's held-out accuracy on them, its agreement with new answers)
LEARNING = (("labels", "labels"), ("heldout_accuracy", "RM acc"), ("agreement", "agrees"))


def learning_parts(values: dict) -> list[str]:
    """['labels 12', 'RM acc 0.75', 'agrees 0.62'] for each judge that learns online (named unless
    it is the one reward judge), for the status line."""
    parts = []
    for judge in sorted({k.rpartition("/")[0] for k in values if k.endswith("/labels")}):
        prefix = "" if judge == "reward" else f"{judge} "
        for name, label in LEARNING:
            v = values.get(f"{judge}/{name}")
            if v is not None:
                shown = f"{v:.0f}" if name == "labels" else "-" if not math.isfinite(v) else f"{v:.2f}"
                parts.append(f"{prefix}{label} {shown}")
    return parts


class DashboardScreen(Screen):
    """The run's live view. Posts Ready once mounted and a Command per control key."""

    class Ready(Message):
        """Mounted: the app shows what arrived before, then redraws it on its timer."""

    class Command(Message):
        """A control key: ``name`` is pause, checkpoint, quit, stop_now or new_run."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding("p", "pause", "Pause/resume"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("q", "quit_run", "Quit"),
        Binding("q", "stop_now", "q again: stop now"),  # shown instead once a stop was asked for
        Binding("ctrl+c", "stop_now", "Stop now", show=False, priority=True),
        Binding("j", "judge", "Judge"),
        Binding("n", "new_run", "New run", show=False),
        Binding("t", "chat", "Chat"),  # t and e: offered once the run has ended
        Binding("e", "after", "Trained vs base"),
    ]

    def __init__(self, config: Config, history: list[dict] | None = None) -> None:
        super().__init__()
        self.config = config
        self.history = list(history or [])  # metrics of the steps a resumed run already made
        self.metrics: dict[str, float] = {}
        self.eval_score: tuple[int, float] | None = None  # (step, score) of the last evaluation
        self.steps_seen = 0
        self.last_checkpoint: int | None = None
        self.ready = False  # mounted and not yet unmounted: widgets can be updated
        self._clock_running = False
        self._checkpoint_paths: deque[str] = deque(maxlen=20)  # recent saves, for de-duplicating logs
        self._status_shown = ""

    def compose(self) -> ComposeResult:
        yield Static("", id="status", markup=False)
        with Horizontal(id="panels"):
            for key, label in MAIN_PANELS:
                if key == "kl":
                    label = f"KL ({self.config.kl_estimator})"
                yield MetricPanel(key, label, id=f"panel-{key}")
        with Horizontal(id="secondary"):
            for key, label in SECONDARY:
                yield Stat(key, label, id=f"stat-{key}")
            yield StepTimeSplit(id="step-split")
        yield RunProgress(id="progress")
        yield StepProgress(id="step-progress")
        with Horizontal(id="bottom"):
            yield SamplesView(id="samples")
            yield LogPane(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#samples").border_title = "latest samples"
        self.query_one("#log").border_title = "log"
        self.query_one(RunProgress).mark_start(0, self.config.steps)
        for record in self.history:  # a resumed run: its plots continue where they were
            values = {k: v for k, v in record.items() if k != "step"}
            for key, _ in MAIN_PANELS:
                self.panel(key).push(record["step"], values.get(key))
            for key, _ in SECONDARY:
                self.query_one(f"#stat-{key}", Stat).set_value(values.get(key))
        if self.history:
            self.query_one(StepTimeSplit).set_times({k: v for k, v in self.history[-1].items() if k != "step"})
            self.add_log("info", f"resumed: {len(self.history)} earlier step(s) from metrics.jsonl")
        self.ready = True
        self.post_message(self.Ready())

    def on_unmount(self) -> None:
        self.ready = False

    # ------------------------------------------------------------------ events
    def panel(self, key: str) -> MetricPanel:
        return self.query_one(f"#panel-{key}", MetricPanel)

    def on_step(self, event: StepMetrics) -> None:
        values = event.values
        self.metrics = dict(values)
        if "eval_score" in values:  # eval_every: the policy on the fixed evaluation set
            self.eval_score = (event.step, values["eval_score"])
        self.steps_seen += 1
        for key, _ in MAIN_PANELS:
            self.panel(key).push(event.step, values.get(key))
        for key, _ in SECONDARY:
            self.query_one(f"#stat-{key}", Stat).set_value(values.get(key))
        self.query_one(StepTimeSplit).set_times(values)
        self.query_one(RunProgress).update_step(event.step)
        self.query_one(StepProgress).clear(f"step {event.step} done in {values.get('time_step', 0):.1f}s · "
                                           f"{values.get('samples_per_second', 0):.2f} samples/s")

    def on_progress(self, event: Progress) -> None:
        self.query_one(StepProgress).update_progress(event)

    def add_samples(self, samples: list[Sample]) -> None:
        self.query_one(SamplesView).add_samples(samples)

    def add_log(self, level: str, message: str, when: float | None = None) -> None:
        if level == "info" and message.startswith("checkpoint saved") and self._already_logged(message):
            return
        self.query_one(LogPane).add(level, message, when)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self.last_checkpoint = event.step
        if event.path not in self._checkpoint_paths:  # the engine may log the same save itself
            self._checkpoint_paths.append(event.path)
            self.add_log("info", f"checkpoint step {event.step}: {event.path}")

    def _already_logged(self, message: str) -> bool:
        return any(path in message for path in self._checkpoint_paths)

    def on_state(self, state: RunState, *, shown_status: str) -> None:
        progress = self.query_one(RunProgress)
        total = state.total_steps or self.config.steps
        if state.status == "running" and not self._clock_running:
            # (re)start the ETA window: after loading the model, and after a pause
            progress.mark_start(state.step, total)
            self._clock_running = True
        else:
            progress.update_step(max(state.step, progress.step), total)
            if state.status == "paused":
                self._clock_running = False
        if state.status in ("stopped", "finished", "failed"):
            self.query_one(StepProgress).clear(f"run {state.status} at step {state.step}")
        elif state.status == "starting":
            self.query_one(StepProgress).clear(state.message or "starting…")
        if state.status == "failed" and state.message:
            self.add_log("error", state.message)
        elif state.message and state.status in ("stopped", "finished"):
            self.add_log("info", f"{state.status}: {state.message}")

    def on_finished(self, status: str, error: str | None) -> None:
        keys = " · q quit · t chat · e trained vs base" if getattr(self.app, "follow_note", None) else \
            " · q quit · n new run · t chat · e trained vs base"
        self.add_log("error" if status == "failed" else "info", f"run {status}" + (f": {error}" if error else "") + keys)
        self.flush()

    # ------------------------------------------------------------------ drawing
    def flush(self) -> None:
        """Show everything recorded since the last flush (the app has handed the events in)."""
        if not self.ready:
            return
        for key, _ in MAIN_PANELS:
            self.panel(key).sync()
        for stat in self.query(Stat):
            stat.sync()
        self.query_one(StepTimeSplit).sync()
        self.query_one(RunProgress).sync()
        self.query_one(StepProgress).sync()
        self.query_one(SamplesView).sync()
        self.query_one(LogPane).sync()
        self.show_status()

    def status_text(self) -> str:
        app = self.app
        status = getattr(app, "status", "idle")
        parts = ["tui-trainer", status]
        following = getattr(app, "follow_note", None)  # the app follows a run another process trains
        if following:
            parts.append(following)
        if status == "starting" and not self.steps_seen:
            parts.append("loading model…")
        if getattr(app, "stopping_after_step", False):
            parts.append(getattr(app, "stopping_note", "stopping after this step — q again to stop now"))
        waiting = app.waiting_count() if hasattr(app, "waiting_count") else 0
        if waiting:
            parts.append(f"judge: {waiting} waiting (j)")
        if self.last_checkpoint is not None:
            parts.append(f"ckpt {self.last_checkpoint}")
        if self.eval_score is not None:
            parts.append(f"eval {self.eval_score[1]:.3f} (step {self.eval_score[0]})")
        parts += learning_parts(self.metrics)  # a reward model learning from the person
        slow = slowest_rank_text(self.metrics)  # a run over several ranks: the one the others wait for
        if slow:
            parts.append(slow)
        parts.append(self.config.run_dir)
        return " · ".join(parts)

    def show_status(self) -> None:
        if self.ready:
            text = self.status_text()
            if text != self._status_shown:
                self._status_shown = text
                self.query_one("#status", Static).update(text, layout=False)

    # ------------------------------------------------------------------ keys
    def action_pause(self) -> None:
        self.post_message(self.Command("pause"))

    def action_checkpoint(self) -> None:
        self.post_message(self.Command("checkpoint"))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        stopping = getattr(self.app, "stopping_after_step", False)
        if action in ("pause", "checkpoint", "new_run") and getattr(self.app, "follow_note", None):
            return False  # the app follows a run another process trains: it does not pause it
        if action == "quit_run":
            return not stopping
        if action == "stop_now":
            return stopping or bool(getattr(self.app, "run_active", False))
        if action in ("chat", "after"):
            return bool(getattr(self.app, "run_ended", False)) and not getattr(self.app, "run_active", False)
        return True

    def action_quit_run(self) -> None:
        self.post_message(self.Command("quit"))

    def action_stop_now(self) -> None:
        self.post_message(self.Command("stop_now"))

    def action_after(self) -> None:
        self.post_message(self.Command("eval"))

    def action_chat(self) -> None:
        self.post_message(self.Command("chat"))

    def action_new_run(self) -> None:
        self.post_message(self.Command("new_run"))

    def action_judge(self) -> None:
        from tui_trainer.screens.judging import JudgingScreen
        self.app.push_screen(JudgingScreen())

    def on_samples_view_open(self, event: SamplesView.Open) -> None:
        from tui_trainer.screens.sample import SampleScreen
        self.app.push_screen(SampleScreen(event.sample))
