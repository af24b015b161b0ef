"""The Textual app: set up a run, watch it, judge its samples from the keyboard.

Threading (see DESIGN.md): every Trainer of the app is built and run inside ONE
exclusive thread worker, the engine thread, which lives as long as the app and
does all the MLX work (MLX streams belong to the thread that made them; the
engine thread clears them when the app closes). A Trainer reports through ``observer(event)``,
which only hands the event to the UI thread; the UI never reads engine state.
Metrics, samples and logs go into an inbox that the dashboard drains when it
redraws (about once a second), so the engine thread never waits for the UI and
the UI wakes (and takes the GIL) once a second, not several times a step. A human
judge asks through :class:`TuiPrompter`: the engine thread posts a
``JudgeRequest`` (``post_message``, which wakes the UI at once) and blocks on its
future, which the judging screen resolves with the pressed key.

Stopping: ``q`` (and ctrl+q) asks the Trainer to stop after the step in flight
(the footer then offers "q again: stop now"); a second ``q``, ctrl+c, SIGTERM,
SIGHUP or the UI closing abandon the step in flight at once. Either way the run
ends on a checkpoint of its last completed step and the app exits once the run
has returned.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import sys
import threading
from collections import deque
from concurrent.futures import InvalidStateError
from typing import Any, Callable

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.worker import Worker, WorkerState

from tui_trainer.config import Config
from tui_trainer.errors import TrainerError, one_line
from tui_trainer.events import (
    CheckpointSaved, JudgeRequest, LogMessage, Progress, RunState, Sample, StepMetrics, Verdict,
)
from tui_trainer.text import printable

__all__ = ["TrainerApp", "TuiPrompter", "EngineEvent", "run_app", "skip_answer"]

ACTIVE = ("starting", "running", "paused", "stopping")


def skip_answer(request: JudgeRequest) -> Verdict | None:
    """The answer that means 'skip' for ``request``'s kind."""
    return Verdict("skip") if request.kind == "pairwise" else None


def resolve(request: JudgeRequest, answer: Any) -> bool:
    """Answer ``request`` unless it is already answered or cancelled; True if this call did."""
    if request.future.done():
        return False
    try:
        request.future.set_result(answer)
    except InvalidStateError:
        return False
    return True


class TuiPrompter:
    """The Prompter protocol (tui_trainer.plugins.judge) for the app.

    Called on the engine thread: it builds a JudgeRequest, hands it to the UI with
    ``deliver`` (non-blocking; False when the UI is gone) and blocks on
    ``request.future``. After ``close()`` every question, pending or new, is
    answered 'skip' so the engine never waits on a UI that will not answer.
    """

    def __init__(self, deliver: Callable[[JudgeRequest], bool]):
        self._deliver = deliver
        self._lock = threading.Lock()
        self._pending: list[JudgeRequest] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def compare(self, prompt: str, a: str, b: str, *, judge: str, step: int) -> Verdict:
        answer = self._ask(JudgeRequest("pairwise", prompt, a, b, judge=judge, step=step))
        return answer if isinstance(answer, Verdict) else Verdict("skip")

    def rate(self, prompt: str, completion: str, *, judge: str, step: int,
             scale: tuple[int, int] = (0, 9)) -> float | None:
        answer = self._ask(JudgeRequest("pointwise", prompt, completion, judge=judge, step=step,
                                        scale=tuple(scale)))
        return None if answer is None or isinstance(answer, Verdict) else float(answer)

    def _ask(self, request: JudgeRequest) -> Any:
        with self._lock:
            if self._closed:
                return skip_answer(request)
            self._pending.append(request)
        try:
            if not self._deliver(request):
                resolve(request, skip_answer(request))
            try:
                return request.future.result()
            except Exception:  # cancelled by whoever holds the request
                return skip_answer(request)
        finally:
            with self._lock:
                self._pending = [r for r in self._pending if r is not request]

    def close(self) -> None:
        """Answer everything pending with 'skip' and every later question at once."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        for request in pending:
            resolve(request, skip_answer(request))


class EngineEvent(Message):
    """An engine event (events.py type, or a list of Samples) carried into the UI thread."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class RunEnded(Message):
    """The engine thread finished a run: its final RunState, or the error that ended it."""

    def __init__(self, state: Any, error: str | None, exit_code: int) -> None:
        super().__init__()
        self.state = state
        self.error = error
        self.exit_code = exit_code


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
        self.prompter = TuiPrompter(self._deliver_request)
        self.pending: deque[JudgeRequest] = deque()
        # engine events not yet shown (appended on the engine thread, drained on the UI thread)
        self._inbox: deque[Any] = deque(maxlen=20000)
        # events that arrive before the dashboard has mounted (or after it went away)
        self._early: deque[Any] = deque(maxlen=5000)
        from tui_trainer.screens.judging import JudgeLedger
        self.ledger = JudgeLedger()
        self.trainer: Any = None
        self.dashboard: Any = None
        self.status = "idle"
        self.state: RunState | None = None
        self.error: str | None = None
        self.exit_code = 0
        self._run_started = False
        self.run_ended = False  # set on the UI thread once the worker's end has been handled
        self._quitting = False
        self._ui_closed = False
        self._stop_requested = threading.Event()
        self._abort_requested = False
        # set while no run is going (the engine thread sets it when a run returns)
        self.worker_done = threading.Event()
        self.worker_done.set()
        # runs for the engine thread: (config, resume, prompter), or None to end it
        self._runs: queue.Queue[tuple[Config, bool, TuiPrompter] | str | None] = queue.Queue()  # "warm": import only
        self._engine_started = False
        self.engine_stopped = threading.Event()  # the engine thread has cleaned up and ended
        self.engine_stopped.set()

    # ------------------------------------------------------------------ start
    def on_mount(self) -> None:
        if self.warm_engine and not self.start_on_mount:
            self._start_engine()
            self._runs.put("warm")
        if self.start_on_mount:
            self.start_run(self.config, resume=self.resume)
        else:
            from tui_trainer.screens.setup import SetupScreen
            self.push_screen(SetupScreen(self.config, config_path=self.config_path,
                                         resume=self.resume))

    @property
    def run_active(self) -> bool:
        return self._run_started and not self.worker_done.is_set()

    def start_run(self, config: Config, *, resume: bool = False) -> None:
        """Show the dashboard and hand ``config`` to the engine thread to train."""
        if self.run_active:
            self.notify("A run is already going.", severity="warning")
            return
        self.config = config
        self.resume = resume
        self.open_dashboard(config)
        self.worker_done.clear()
        self._run_started = True
        self.run_ended = False
        self._start_engine()
        self._runs.put((config, resume, self.prompter))

    def _start_engine(self) -> None:
        if not self._engine_started:
            self._engine_started = True
            self.engine_stopped.clear()
            self._engine()

    def open_dashboard(self, config: Config) -> Any:
        """Show a fresh dashboard for ``config``; engine events go to it from now on."""
        from tui_trainer.screens.dashboard import DashboardScreen
        self.status = "starting"
        self.state = None
        self.error = None
        self.exit_code = 0
        self._stop_requested.clear()
        self._abort_requested = False
        self.prompter = TuiPrompter(self._deliver_request)
        self.pending.clear()
        self._inbox.clear()
        self._early.clear()
        self.dashboard = DashboardScreen(config)
        if len(self.screen_stack) > 1:
            self.switch_screen(self.dashboard)
        else:
            self.push_screen(self.dashboard)
        return self.dashboard

    @work(thread=True, exclusive=True, group="trainer", exit_on_error=False)
    def _engine(self) -> None:
        """The engine thread: every run of this app, one after another, on this one thread.

        One thread for the app's life, because MLX streams belong to the thread
        that made them: they are cleared once, when the app closes (see
        ``_release_engine_thread``), and a later run on the same thread still has them.
        """
        try:
            while True:
                job = self._runs.get()
                if job is None:
                    break
                if job == "warm":
                    import tui_trainer.engine.trainer  # noqa: F401  MLX, mlx-lm: imported ahead of the run
                    continue
                ended = RunEnded(*self._run_one(*job))
                try:
                    self.post_message(ended)
                except RuntimeError:  # the UI's loop is gone
                    pass
        finally:
            _release_engine_thread()
            self.engine_stopped.set()

    def _run_one(self, config: Config, resume: bool, prompter: TuiPrompter) -> tuple[Any, str | None, int]:
        """One run on the engine thread: (final RunState or None, error line or None, exit code)."""
        trainer = None
        try:
            from tui_trainer.run import build_run
            trainer = build_run(config, observer=self._observe, prompter=prompter, resume=resume)
            self.trainer = trainer
            if self._abort_requested:
                trainer.abort()
            elif self._stop_requested.is_set():
                trainer.stop()
            state = trainer.run()
            return state, None, 0
        except Exception as exc:  # reported as one line; the traceback (and its frames) go now
            return None, one_line(exc), 2 if isinstance(exc, TrainerError) else 1
        finally:
            self.trainer = None
            del trainer
            gc.collect()  # free the engine's arrays on the thread that made them
            self.worker_done.set()

    # ------------------------------------------------------------------ engine -> UI
    def _observe(self, event: Any) -> None:
        """The Trainer's observer (engine thread): hand over, never block on the UI."""
        if self._ui_closed:
            return
        if isinstance(event, JudgeRequest):  # someone is waiting: wake the UI now
            self._deliver_request(event)
            return
        self._inbox.append(list(event) if isinstance(event, list) else event)

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
        if not (self._stop_requested.is_set() and state.status in ("running", "paused")):
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

    def answer(self, request: JudgeRequest, answer: Any) -> bool:
        """Resolve ``request`` with ``answer`` (a Verdict, a rating or None = skip)."""
        done = resolve(request, answer)
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
        trainer = self.trainer
        if not self.run_active or trainer is None or self._stop_requested.is_set():
            self.notify("No run to pause.", severity="warning")
            return
        if self.status == "paused" or getattr(trainer, "paused", False):
            trainer.resume()
            self._log("info", "resuming")
        else:
            trainer.pause()
            self._log("info", "pausing after the current step")

    def checkpoint_now(self) -> None:
        if not self.run_active or self.trainer is None:
            self.notify("No run to checkpoint.", severity="warning")
            return
        self.trainer.request_checkpoint()
        self._log("info", "checkpoint requested: saved after the current step")

    def stop_run(self, reason: str = "stopping") -> None:
        """Ask the run to stop (it checkpoints first); never blocks the UI thread."""
        if not self.run_active:
            return
        first = not self._stop_requested.is_set()
        self._stop_requested.set()
        self.prompter.close()
        self._skip_all_pending()
        trainer = self.trainer
        if trainer is not None:
            threading.Thread(target=trainer.stop, name="tui-trainer-stop", daemon=True).start()
        if first:
            self.status = "stopping"
            self._log("warning", reason)
            if self.dashboard is not None:
                self.dashboard.show_status()
                self.dashboard.refresh_bindings()

    @property
    def stopping_after_step(self) -> bool:
        """A stop was asked for and the run has not ended: a second q stops now."""
        return self.run_active and self._stop_requested.is_set() and not self._abort_requested

    def stop_now(self, reason: str = "stopping now: the step in flight is abandoned") -> None:
        """Abandon the step in flight (rollout, judge call or update); never blocks the UI thread."""
        if not self.run_active:
            return
        self.stop_run(reason)
        if not self._abort_requested:
            self._abort_requested = True
            self.status = "stopping"
            self._log("warning", reason)
        trainer = self.trainer
        if trainer is not None:
            trainer.abort()  # sets events only: safe from the UI thread
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
        self.trainer = None
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

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The engine thread itself ended: only expected when the app closes."""
        if event.worker.group != "trainer" or event.state not in (
                WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        self._engine_started = False
        if self.run_active or not self.run_ended and self._run_started:
            self.worker_done.set()
            self.drain_events()
            self.status = "failed"
            self.error = one_line(event.worker.error, "the engine stopped")
            self.exit_code = 1
            self._finish_run()

    def _finish_run(self) -> None:
        self.run_ended = True
        if self.dashboard is not None and self.dashboard.ready:
            self.dashboard.on_finished(self.status, self.error)
        if self._quitting:
            self.exit(self.exit_code)

    # ------------------------------------------------------------------ screens
    def action_help(self) -> None:
        from tui_trainer.screens.help import HelpScreen
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_plugins(self) -> None:
        from tui_trainer.screens.plugins import PluginsScreen
        if not isinstance(self.screen, PluginsScreen):
            self.push_screen(PluginsScreen())

    def new_run(self) -> None:
        """Back to the setup screen after a run has ended."""
        if self.run_active:
            self.notify("Stop the run first (q).", severity="warning")
            return
        from tui_trainer.screens.setup import SetupScreen
        self.dashboard = None
        self._run_started = False
        self.switch_screen(SetupScreen(self.config, config_path=self.config_path, resume=False))

    def screen_text(self) -> str:
        """The current screen as plain text, one line per row (for tests and bug reports)."""
        import io

        from rich.console import Console

        width, height = self.size
        console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                          color_system=None, record=True, legacy_windows=False, safe_box=False)
        console.print(self.screen._compositor.render_update(
            full=True, screen_stack=self._background_screens))
        return console.export_text(styles=False)

    def _log(self, level: str, message: str) -> None:
        self.handle_event(LogMessage(level, message))

    def on_unmount(self) -> None:
        """The UI is going away (exit, crash, lost terminal): never leave the engine waiting."""
        self._ui_closed = True
        self._quitting = True
        self.stop_now("app closed: stopping now")
        self.prompter.close()
        self._runs.put(None)  # the engine thread ends after the current run


def _release_engine_thread() -> None:
    """End-of-thread cleanup for MLX, on the engine (worker) thread, never on the UI thread.

    MLX wants the streams a thread created destroyed by that thread
    (``mx.clear_streams()``); otherwise they are torn down at interpreter exit,
    after the thread is gone, and the process aborts ("terminate called without
    an active exception", exit 134) after a run that went well.
    """
    import sys as _sys

    mx = _sys.modules.get("mlx.core")  # loaded by the Trainer on this thread, if it got that far
    if mx is None:
        return
    try:
        mx.synchronize()
        mx.clear_streams()
    except Exception:  # cleanup must never mask the run's own outcome
        pass


HANGUP_GRACE = 3.0  # seconds the UI gets to close by itself once the run has stopped
ENGINE_CLEANUP_WAIT = 30.0  # seconds to let the engine thread release MLX after the last run


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
    previous: dict[int, Any] = {}

    def ask_ui_to_close() -> None:
        loop = app._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(app.hangup)
            except RuntimeError:
                pass

    def stop_engine() -> None:
        app._ui_closed = True
        app._stop_requested.set()
        app._abort_requested = True
        app.prompter.close()
        trainer = app.trainer
        if trainer is not None:
            trainer.abort()  # the UI is gone: the step in flight is abandoned, the last one kept
        app._runs.put(None)

    def after_hangup() -> None:
        stop_engine()
        app.worker_done.wait()
        if not app_closed.wait(HANGUP_GRACE):
            os._exit(app.exit_code or signalled.get("code", 0))  # checkpoint and run files are written and closed by now

    signalled: dict[str, int] = {}  # a run stopped by a signal exits 128 + its number (143, 129)

    def on_sigterm(signum: int, _frame: Any) -> None:
        signalled.setdefault("code", 128 + signum)
        ask_ui_to_close()

    def on_sighup(signum: int, _frame: Any) -> None:
        signalled.setdefault("code", 128 + signum)
        ask_ui_to_close()
        threading.Thread(target=after_hangup, name="tui-trainer-hangup", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        for name, handler in (("SIGHUP", on_sighup), ("SIGTERM", on_sigterm)):
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, handler)
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
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if app.error:
        try:
            print(f"tui-trainer: error: {printable(app.error)}", file=sys.stderr)
        except OSError:
            pass
    rc = int(code if code is not None else app.exit_code)
    return rc or signalled.get("code", 0)
