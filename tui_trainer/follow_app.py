"""The app following a run that another process trains: a job of several ranks started by
``train --launch N`` / ``--hosts FILE`` (its rank 0 writes the run directory), or any run directory
being written (``tui-trainer watch RUN_DIR``).

It is the same :class:`~tui_trainer.app.TrainerApp` and dashboard: instead of an engine thread
in this process, a timer (every ``POLL_SECONDS``) reads the new lines of the run's
``metrics.jsonl`` and ``samples.jsonl`` (:class:`tui_trainer.follow.RunFollower`) and hands the
events they make to the dashboard's inbox, as the engine thread would. Rank 0 gathers every rank's
samples and metrics, so the dashboard shows the whole job, the slowest rank on its status line.

With a job (:class:`tui_trainer.commands.launch.BackgroundJob`): ``q`` stops it as Ctrl-C stops
``train --launch`` (every rank abandons its step in flight and ends on its last checkpoint) and
exits once it has ended; ``q`` again kills it at once. A job that ends by itself leaves the app
open on "finished" (or "failed" and the launcher's one line) until ``q``. Without a job (watch)
nothing is written and ``q`` exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tui_trainer.app import FLUSH_SECONDS, TrainerApp
from tui_trainer.config import Config
from tui_trainer.events import RunState, StepMetrics
from tui_trainer.follow import RunFollower
from tui_trainer.runner import ENGINE_CLEANUP_WAIT
from tui_trainer.text import printable

__all__ = ["FollowApp", "run_follow", "lock_holder"]

POLL_SECONDS = 0.5


def lock_holder(run_dir: str | Path) -> str | None:
    """The pid a live run wrote into the run directory's ``.lock`` (RunLock; emptied when it ends),
    else None; a pid left by a process that was killed, when no such process runs here, is None too
    (a run directory on a shared disk may be held from another host: then the pid is believed).
    Read only: the lock itself is never taken (that could make the run's own start fail)."""
    import os

    try:
        text = (Path(run_dir) / ".lock").read_text().strip()
    except OSError:
        return None
    if text.isdigit():
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            return None
        except OSError:  # someone else's process: it runs
            pass
    return text or None


class FollowApp(TrainerApp):
    """The dashboard fed from a run directory; ``job`` is the launched job this app controls."""

    def __init__(self, config: Config, *, job: Any = None, ranks: int | None = None) -> None:
        super().__init__(config)
        self.job = job
        self.ranks = ranks
        self.follower = RunFollower(config.run_dir)
        self.killed = False

    @property
    def follow_note(self) -> str:
        """The status line's word on what is followed."""
        if self.job is not None:
            return f"following a job of {self.ranks} ranks" if self.ranks else "following a launched job"
        return "watching (read-only)"

    # ------------------------------------------------------------------ start
    def on_mount(self, event: Any) -> None:
        event.prevent_default()  # Textual would run TrainerApp.on_mount too (the setup screen)
        self.set_interval(FLUSH_SECONDS, self.redraw)
        self.open_dashboard(self.config)
        if self.job is None:
            holder = lock_holder(self.config.run_dir)
            self.status = "running" if holder else "not running"
            self._log("info", f"watching {self.config.run_dir}: "
                      + (f"pid {holder} is training it" if holder else "no process holds it now"))
        else:
            self._log("info", f"mlx.launch started; its output goes to {self.job.log_path}")
        self.set_interval(POLL_SECONDS, self.poll_run)
        self.poll_run()

    @property
    def run_active(self) -> bool:
        return self.job is not None and not self.job.done.is_set()

    def poll_run(self) -> None:
        """The timer: the run directory's new lines into the inbox; the job's end, once."""
        for event in self.follower.poll():
            if isinstance(event, StepMetrics) and self.status in ("starting", "not running"):
                self._inbox.append(RunState("running", event.step, self.config.steps, self.config.run_dir))
            self._inbox.append(event)
        if self.job is None:
            if self.follower.last_step:
                self.status = "running" if lock_holder(self.config.run_dir) else "not running"
        elif self.job.done.is_set() and not self.run_ended and self.dashboard is not None and self.dashboard.ready:
            for event in self.follower.poll():  # what rank 0 wrote last
                self._inbox.append(event)
            self._job_ended()

    def _job_ended(self) -> None:
        self.drain_events()
        code, error = self.job.code or 0, self.job.error
        self.exit_code = code
        if error:
            self.error = error.removeprefix("tui-trainer: error: ")
            self.status = "failed"
            self._log("error", self.error)
        elif self.killed or self.runner.stop_requested.is_set() or code in (130, 143):
            self.status = "stopped"
        elif code == 0:
            self.status = "finished"
        else:
            self.status = "failed"
            self.error = f"the job ended with exit code {code}; see {self.job.log_path}"
            self._log("error", self.error)
        self._finish_run()

    # ------------------------------------------------------------------ controls
    def toggle_pause(self) -> None:
        self.notify("A launched job cannot pause from here; q stops it." if self.job is not None
                    else "Watching only: this app does not control the run.", severity="warning")

    def checkpoint_now(self) -> None:
        self.toggle_pause()

    def new_run(self) -> None:
        self.notify("q ends this app; start a new run with tui-trainer.", severity="warning")

    def stop_run(self, reason: str = "stopping") -> None:
        """q: every rank abandons its step in flight and ends on its last checkpoint."""
        if not self.run_active or self.runner.stop_requested.is_set():
            return
        self.runner.stop_requested.set()  # what the dashboard asks (stopping_after_step)
        self.job.stop()
        self.status = "stopping"
        self._log("warning", self.stopping_note)
        if self.dashboard is not None:
            self.dashboard.show_status()
            self.dashboard.refresh_bindings()

    stopping_note = "stopping the job: each rank ends on its last checkpoint — q again to kill it now"

    @property
    def stopping_after_step(self) -> bool:
        return self.run_active and self.runner.stop_requested.is_set() and not self.killed

    def stop_now(self, reason: str = "killing the job now") -> None:
        if not self.run_active:
            return
        if not self.runner.stop_requested.is_set():
            self.stop_run(reason)
            return
        self.killed = True
        self.status = "stopping"
        self._log("warning", reason)
        self.job.kill()

    def on_unmount(self, event: Any) -> None:
        """The UI is going away: a job still going is stopped (its ranks checkpoint)."""
        event.prevent_default()  # (not TrainerApp's: no engine run to abandon)
        self._ui_closed = True
        self._quitting = True
        if self.run_active:
            self.job.stop()
        self.runner.close(wait=ENGINE_CLEANUP_WAIT)


def run_follow(config: Config, *, job: Any = None, ranks: int | None = None) -> int:
    """The app on ``config.run_dir``; with ``job``, return once it has ended, its exit code.

    SIGTERM / SIGHUP (the terminal is gone) stop the job as ``q`` does and close the app; after a
    SIGHUP, should the UI not close within ``HANGUP_GRACE`` seconds of the job's end (a UI writing to
    a dead terminal can block), the process ends itself, as the app of a run of its own does."""
    import os
    import signal
    import threading

    from tui_trainer.app import HANGUP_GRACE
    from tui_trainer.runner import stop_signals

    app = FollowApp(config, job=job, ranks=ranks)
    app_closed = threading.Event()
    signalled: dict[str, int] = {}

    def after_hangup() -> None:
        if job is not None:
            job.done.wait()
        if not app_closed.wait(HANGUP_GRACE):
            os._exit(signalled["code"])

    def on_signal(signum: int) -> None:
        signalled.setdefault("code", 128 + signum)
        if job is not None:
            job.stop()  # a signal to the job's process group: safe from here
        loop = app._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(app.exit, signalled["code"])
            except RuntimeError:
                pass
        if signum == getattr(signal, "SIGHUP", None):
            threading.Thread(target=after_hangup, name="tui-trainer-hangup", daemon=True).start()

    restore = stop_signals(on_signal)
    try:
        code = app.run()
    finally:
        app_closed.set()
        if job is not None and not job.done.is_set():
            job.stop()
            try:
                job.done.wait()
            except KeyboardInterrupt:
                job.kill()
                job.done.wait()
        restore()
    if job is not None:
        if job.error:
            print(printable(job.error), file=sys.stderr)
        return signalled.get("code") or (job.code if job.code is not None else 1)
    return signalled.get("code") or int(code or 0)
