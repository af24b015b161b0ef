"""The Textual app: set up a run, watch it, judge its samples from the keyboard.

Threading (see DESIGN.md): the app drives its runs through a :class:`tui_trainer.runner.Runner`,
which owns the engine thread (all MLX work, one thread for the app's life). A Trainer reports
through ``observer(event)``, which only hands the event to the UI thread; the UI never reads
engine state.
Metrics, samples and logs go into an inbox that the dashboard drains when it
redraws (about once a second), so the engine thread never waits for the UI and
the UI wakes (and takes the GIL) once a second, not several times a step. A human
judge asks through the runner's :class:`PromptBridge`: the engine thread posts a
``JudgeRequest`` (``post_message``, which wakes the UI at once) and blocks on its
future, which the judging screen resolves with the pressed key.

Stopping: ``q`` (and ctrl+q) asks the Trainer to stop after the step in flight
(the footer then offers "q again: stop now"); a second ``q``, ctrl+c, SIGTERM,
SIGHUP or the UI closing abandon the step in flight at once. Either way the run
ends on a checkpoint of its last completed step and the app exits once the run
has returned.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import deque
from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message

from tui_trainer.config import Config
from tui_trainer.events import CheckpointSaved, JudgeRequest, LogMessage, Progress, RunState, Sample, StepMetrics
from tui_trainer.runner import ENGINE_CLEANUP_WAIT, PromptBridge, Runner, RunResult, resolve, skip_answer, stop_signals
from tui_trainer.text import printable

__all__ = ["TrainerApp", "EngineEvent", "run_app"]

ACTIVE = ("starting", "running", "paused", "stopping")


class EngineEvent(Message):
    """An engine event (events.py type, or a list of Samples) carried into the UI thread."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class RunEnded(Message):
    """The engine thread finished a run: its final RunState, or the error that ended it."""

    def __init__(self, result: RunResult) -> None:
        super().__init__()
        self.state = result.state
        self.error = result.error
        self.exit_code = result.exit_code


class TrainerApp(App[int]):
    """tui-trainer's terminal app; ``return_value`` is the process exit code."""

    TITLE = "tui-trainer"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("f1", "help", "Help", show=False),
        Binding("f2", "plugins", "Plugins"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, config: Config | None = None, *, config_path: str | None = None,
                 resume: bool = False, start: bool = False, warm: bool = False) -> None:
        super().__init__()
        # warm: start the engine thread at once and let it import MLX and the trainer while the
        # setup screen is shown, so that a run's first progress comes within a second of start
        self.warm_engine = warm
        self.config = config if config is not None else Config()
        self.config_path = config_path
        self.resume = resume
        self.start_on_mount = start
        self.runner = Runner(observer=self._observe, on_ended=self._post_run_ended)
        self.prompter = PromptBridge(self._deliver_request)
        self.pending: deque[JudgeRequest] = deque()
        # engine events not yet shown (appended on the engine thread, drained on the UI thread)
        self._inbox: deque[Any] = deque(maxlen=20000)
        # events that arrive before the dashboard has mounted (or after it went away)
        self._early: deque[Any] = deque(maxlen=5000)
        from tui_trainer.screens.judging import JudgeLedger
        self.ledger = JudgeLedger()
        self.dashboard: Any = None
        self.status = "idle"
        self.state: RunState | None = None
        self.error: str | None = None
        self.exit_code = 0
        self.run_ended = False  # set on the UI thread once the run's end has been handled
        self._quitting = False
        self._ui_closed = False

    # ------------------------------------------------------------------ start
    @property
    def trainer(self) -> Any:
        return self.runner.trainer

    @property
    def worker_done(self) -> threading.Event:
        """Set while no run is going."""
        return self.runner.worker_done

    @property
    def engine_stopped(self) -> threading.Event:
        """Set once the engine thread has cleaned up and ended."""
        return self.runner.engine_stopped

    def on_mount(self) -> None:
        self.set_interval(FLUSH_SECONDS, self.redraw)
        if self.warm_engine and not self.start_on_mount:
            self.runner.warm()
        if self.start_on_mount:
            self.start_run(self.config, resume=self.resume)
        else:
            from tui_trainer.screens.setup import SetupScreen
            self.push_screen(SetupScreen(self.config, config_path=self.config_path,
                                         resume=self.resume))

    @property
    def run_active(self) -> bool:
        return self.runner.run_active

    def start_run(self, config: Config, *, resume: bool = False) -> None:
        """Show the dashboard and hand ``config`` to the engine thread to train."""
        if self.run_active:
            self.notify("A run is already going.", severity="warning")
            return
        self.config = config
        self.resume = resume
        self.open_dashboard(config)
        self.run_ended = False
        self.runner.start(config, resume=resume, prompter=self.prompter)

    def open_dashboard(self, config: Config) -> Any:
        """Show a fresh dashboard for ``config``; engine events go to it from now on."""
        from tui_trainer.screens.dashboard import DashboardScreen
        self.status = "starting"
        self.state = None
        self.error = None
        self.exit_code = 0
        self.prompter = PromptBridge(self._deliver_request)
        self.pending.clear()
        self._inbox.clear()
        self._early.clear()
        history: list = []
        if self.resume:  # the plots continue from the steps the run has already made
            from tui_trainer.tracking import resume_history

            history = resume_history(config.run_dir)
        self.dashboard = DashboardScreen(config, history=history)
        if len(self.screen_stack) > 1:
            self.switch_screen(self.dashboard)
        else:
            self.push_screen(self.dashboard)
        return self.dashboard

    # ------------------------------------------------------------------ engine -> UI
    def _post_run_ended(self, result: RunResult) -> None:
        """The runner's on_ended (engine thread): the UI handles it in on_run_ended."""
        try:
            self.post_message(RunEnded(result))
        except RuntimeError:  # the UI's loop is gone
            pass

    def _observe(self, event: Any) -> None:
        """The Trainer's observer (engine thread): hand over, never block on the UI."""
        if self._ui_closed:
            return
        if isinstance(event, JudgeRequest):  # someone is waiting: wake the UI now
            self._deliver_request(event)
            return
        self._inbox.append(list(event) if isinstance(event, list) else event)

    def redraw(self) -> None:
        """The redraw timer (about once a second) and after a key: hand the engine's events to the
        dashboard, then let it draw."""
        dash = self.dashboard
        if dash is not None and dash.ready:
            self.drain_events()
            try:
                dash.flush()
            except NoMatches:  # the timer fired while Textual removes the dashboard's widgets (exit):
                pass           # they go before the screen's unmount clears `ready`

    def drain_events(self) -> None:
        """Apply the events the engine has handed over since the last call (UI thread)."""
        while self._inbox:
            self.handle_event(self._inbox.popleft())

    def _deliver_request(self, request: JudgeRequest) -> bool:
        if self._ui_closed:
            return False
        try:
            return self.post_message(EngineEvent(request))
        except RuntimeError:
            return False

    def on_engine_event(self, message: EngineEvent) -> None:
        self.drain_events()  # keep the order: what came before the message first
        self.handle_event(message.event)

    def handle_event(self, event: Any) -> None:
        """Apply one engine event to the UI (UI thread)."""
        dash = self.dashboard
        if dash is not None and not dash.ready and not isinstance(event, JudgeRequest):
            self._early.append(event)
            return
        if isinstance(event, JudgeRequest):
            self._add_request(event)
        elif isinstance(event, StepMetrics):
            if dash is not None:
                dash.on_step(event)
        elif isinstance(event, Progress):
            if dash is not None:
                dash.on_progress(event)
        elif isinstance(event, list):
            samples = [s for s in event if isinstance(s, Sample)]
            if dash is not None and samples:
                dash.add_samples(samples)
        elif isinstance(event, Sample):
            if dash is not None:
                dash.add_samples([event])
        elif isinstance(event, RunState):
            self._on_state(event)
        elif isinstance(event, LogMessage):
            if dash is not None:
                dash.add_log(event.level, event.message, event.time)
        elif isinstance(event, CheckpointSaved):
            if dash is not None:
                dash.on_checkpoint(event)

    def replay_early_events(self) -> None:
        """The dashboard is ready: show what arrived before it was."""
        while self._early:
            self.handle_event(self._early.popleft())

    def _on_state(self, state: RunState) -> None:
        self.state = state
        if not (self.runner.stop_requested.is_set() and state.status in ("running", "paused")):
            self.status = state.status
        if state.status == "failed":
            self.error = state.message or "the run failed"
            self.exit_code = 1
        if self.dashboard is not None and self.dashboard.ready:
            self.dashboard.on_state(state, shown_status=self.status)

    # ------------------------------------------------------------------ judging
    def _add_request(self, request: JudgeRequest) -> None:
        if request.future.done():
            return
        if self.prompter.closed or self._quitting:
            resolve(request, skip_answer(request))
            return
        self.pending.append(request)
        from tui_trainer.screens.judging import JudgingScreen
        current = self.screen
        if isinstance(current, JudgingScreen):
            current.show_current()
        elif self.dashboard is not None and current is self.dashboard:
            self.push_screen(JudgingScreen())
        else:
            self.notify("A judge question is waiting: press j on the dashboard.")
        if self.dashboard is not None:
            self.dashboard.show_status()

    def current_request(self) -> JudgeRequest | None:
        """The oldest question still open (answered or cancelled ones are dropped)."""
        while self.pending and self.pending[0].future.done():
            self.pending.popleft()
        return self.pending[0] if self.pending else None

    def waiting_count(self) -> int:
        return sum(1 for r in self.pending if not r.future.done())

    def answer(self, request: JudgeRequest, answer: Any, resolved: bool | None = None) -> bool:
        """Resolve ``request`` with ``answer`` (a Verdict, a rating or None = skip), unless the
        judging screen already has (``resolved``); record it and drop it from the queue."""
        done = resolve(request, answer) if resolved is None else resolved
        if done:
            self.ledger.record(request, answer)
        for i, waiting in enumerate(self.pending):
            if waiting is request:
                del self.pending[i]
                break
        if self.dashboard is not None:
            self.dashboard.show_status()
        return done

    def _skip_all_pending(self) -> None:
        while self.pending:
            request = self.pending.popleft()
            resolve(request, skip_answer(request))

    # ------------------------------------------------------------------ controls
    def toggle_pause(self) -> None:
        if not self.run_active or self.trainer is None or self.runner.stop_requested.is_set():
            self.notify("No run to pause.", severity="warning")
            return
        if self.status == "paused" or self.runner.paused:
            self.runner.resume()
            self._log("info", "resuming")
        else:
            self.runner.pause()
            self._log("info", "pausing after the current step")

    def checkpoint_now(self) -> None:
        if not self.run_active or self.trainer is None:
            self.notify("No run to checkpoint.", severity="warning")
            return
        self.runner.request_checkpoint()
        self._log("info", "checkpoint requested: saved after the current step")

    def stop_run(self, reason: str = "stopping") -> None:
        """Ask the run to stop (it checkpoints first); never blocks the UI thread."""
        if not self.run_active:
            return
        first = self.runner.stop()  # sets the trainer's events only
        self.prompter.close()
        self._skip_all_pending()
        if first:
            self.status = "stopping"
            self._log("warning", reason)
            if self.dashboard is not None:
                self.dashboard.show_status()
                self.dashboard.refresh_bindings()

    @property
    def stopping_after_step(self) -> bool:
        """A stop was asked for and the run has not ended: a second q stops now."""
        return self.run_active and self.runner.stop_requested.is_set() and not self.runner.abort_requested

    def stop_now(self, reason: str = "stopping now: the step in flight is abandoned") -> None:
        """Abandon the step in flight (rollout, judge call or update); never blocks the UI thread."""
        if not self.run_active:
            return
        self.stop_run(reason)
        if self.runner.abort():  # sets events only: safe from the UI thread
            self.status = "stopping"
            self._log("warning", reason)
        if self.dashboard is not None:
            self.dashboard.show_status()
            self.dashboard.refresh_bindings()

    async def action_quit(self) -> None:
        self.request_quit()

    def request_quit(self) -> None:
        """q / ctrl+q: stop the run with a checkpoint, then exit once the worker returns."""
        if not self.run_active:
            self.exit(self.exit_code)
            return
        if self._quitting:
            self.quit_now()
            return
        self._quitting = True
        self.stop_run("quit: stopping after this step — q again to stop now")

    def quit_now(self) -> None:
        """q again / ctrl+c: abandon the step in flight, then exit once the run has returned."""
        self._quitting = True
        self.stop_now()

    def hangup(self) -> None:
        """The terminal went away (SIGHUP) or SIGTERM: abandon the step in flight, exit."""
        self._quitting = True
        self.stop_now("terminal closed or SIGTERM: stopping now")
        if not self.run_active:
            self.exit(self.exit_code)

    def on_run_ended(self, message: RunEnded) -> None:
        """The engine thread finished a run (UI thread)."""
        self.drain_events()
        self.prompter.close()
        self._skip_all_pending()
        final, error = message.state, message.error
        if error is not None:
            self.exit_code = message.exit_code
            if self.error != error and not (self.state and self.state.status == "failed"
                                            and self.state.message == error):
                self._log("error", error)
            self.error = error
            self.status = "failed"
        elif isinstance(final, RunState):
            self.state = final
            self.status = final.status
            if final.status == "failed":
                self.exit_code = 1
                self.error = final.message or "the run failed"
        self._finish_run()

    def _finish_run(self) -> None:
        self.run_ended = True
        if self.dashboard is not None and self.dashboard.ready:
            self.dashboard.on_finished(self.status, self.error)
            self.dashboard.refresh_bindings()  # t (chat) and e (trained vs base) are offered now
        if self._quitting:
            self.exit(self.exit_code)

    # ------------------------------------------------------------------ what the screens say
    def on_setup_screen_start(self, message: Any) -> None:
        self.config_path = message.config_path
        self.start_run(message.config, resume=message.resume)

    def on_dashboard_screen_ready(self, _message: Any) -> None:
        self.replay_early_events()
        self.redraw()

    def on_dashboard_screen_command(self, message: Any) -> None:
        {"pause": self.toggle_pause, "checkpoint": self.checkpoint_now, "quit": self.request_quit,
         "stop_now": self.quit_now, "new_run": self.new_run, "chat": self.open_chat,
         "eval": self.open_after}[message.name]()
        if self.dashboard is not None and self.dashboard.ready and message.name != "new_run":
            self.dashboard.refresh_bindings()
            self.redraw()

    def on_judging_screen_answered(self, message: Any) -> None:
        self.answer(message.request, message.answer, resolved=message.resolved)

    # ------------------------------------------------------------------ screens
    def action_help(self) -> None:
        from tui_trainer.screens.help import HelpScreen
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_plugins(self) -> None:
        from tui_trainer.screens.plugins import PluginsScreen
        if not isinstance(self.screen, PluginsScreen):
            self.push_screen(PluginsScreen())

    def open_chat(self) -> None:
        """Chat with the run that has ended (its latest checkpoint), on the engine thread."""
        if self.run_active:
            self.notify("Chat opens once the run has ended.", severity="warning")
            return
        from pathlib import Path

        from tui_trainer.screens.chat import ChatScreen

        if not (Path(self.config.run_dir) / "checkpoints").is_dir():
            self.notify("This run has no checkpoint to chat with.", severity="warning")
            return
        self.push_screen(ChatScreen(self.runner, self.config.run_dir, max_new_tokens=max(self.config.max_new_tokens, 128),
                                    temperature=self.config.temperature))

    def open_after(self) -> None:
        """The "after" view: the ended run's trained policy against its base, side by side."""
        if self.run_active:
            self.notify("The comparison opens once the run has ended.", severity="warning")
            return
        from pathlib import Path

        from tui_trainer.screens.after import AfterScreen

        if not (Path(self.config.run_dir) / "checkpoints").is_dir():
            self.notify("This run has no checkpoint to compare.", severity="warning")
            return
        self.push_screen(AfterScreen(self.runner, self.config.run_dir))

    def new_run(self) -> None:
        """Back to the setup screen after a run has ended."""
        if self.run_active:
            self.notify("Stop the run first (q).", severity="warning")
            return
        from tui_trainer.screens.setup import SetupScreen
        self.dashboard = None
        self.runner.started = False
        self.switch_screen(SetupScreen(self.config, config_path=self.config_path, resume=False))

    def _log(self, level: str, message: str) -> None:
        self.handle_event(LogMessage(level, message))

    def on_unmount(self) -> None:
        """The UI is going away (exit, crash, lost terminal): never leave the engine waiting."""
        self._ui_closed = True
        self._quitting = True
        self.stop_now("app closed: stopping now")
        self.prompter.close()
        # the engine thread ends after the run in flight (abandoned above) and releases MLX
        self.runner.close(wait=ENGINE_CLEANUP_WAIT)


FLUSH_SECONDS = 1.0  # the dashboard's redraw period
HANGUP_GRACE = 3.0  # seconds the UI gets to close by itself once the run has stopped


def run_app(config: Config | None = None, *, config_path: str | None = None, resume: bool = False,
            start: bool = False) -> int:
    """Open the app (setup screen, or straight into training with ``start``); return the exit code.

    SIGTERM stops the run with a checkpoint and closes the app. SIGHUP (the
    terminal is gone) does the same without relying on the UI: a helper thread
    stops the run, waits for the worker to save its checkpoint and return, gives
    the UI a moment to close, and otherwise ends the process itself, because a
    UI writing to a dead terminal can block for ever. This function returns
    only after the training worker has finished.
    """
    app = TrainerApp(config, config_path=config_path, resume=resume, start=start, warm=True)
    app_closed = threading.Event()
    signalled: dict[str, int] = {}  # a run stopped by a signal exits 128 + its number (143, 129)

    def ask_ui_to_close() -> None:
        loop = app._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(app.hangup)
            except RuntimeError:
                pass

    def stop_engine() -> None:
        app._ui_closed = True
        app.prompter.close()
        app.runner.abort()  # the UI is gone: the step in flight is abandoned, the last one kept
        app.runner.close()

    def after_hangup() -> None:
        stop_engine()
        app.worker_done.wait()
        if not app_closed.wait(HANGUP_GRACE):
            os._exit(app.exit_code or signalled.get("code", 0))  # checkpoint and run files are written and closed by now

    def on_signal(signum: int) -> None:
        signalled.setdefault("code", 128 + signum)
        ask_ui_to_close()
        if signum == getattr(signal, "SIGHUP", None):  # the terminal is gone: do not rely on the UI
            threading.Thread(target=after_hangup, name="tui-trainer-hangup", daemon=True).start()

    restore_signals = stop_signals(on_signal)
    code: int | None = None
    try:
        code = app.run()
    finally:
        app_closed.set()
        # Whatever ended the UI, the engine stops with a checkpoint before we return,
        # and its thread cleans up MLX before the interpreter exits.
        stop_engine()
        app.worker_done.wait()
        app.engine_stopped.wait(ENGINE_CLEANUP_WAIT)
        restore_signals()
    if app.error:
        try:
            print(f"tui-trainer: error: {printable(app.error)}", file=sys.stderr)
        except OSError:
            pass
    rc = int(code if code is not None else app.exit_code)
    return rc or signalled.get("code", 0)
