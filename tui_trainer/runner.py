"""The engine thread, outside any UI: runs, stop / pause / checkpoint requests, the human-judge
bridge, MLX clean-up, and the signals that stop a run. The app and ``train --headless`` both
drive a run through :class:`Runner`, so the two cannot drift apart.

Threading (see DESIGN.md): MLX is not safe to drive from several threads, and its streams
belong to the thread that made them. A Runner owns ONE engine thread for its whole life;
every run it is given is built and trained there, one after another, and the thread clears
its MLX streams when it ends (:meth:`Runner.close`). Controls (``stop``, ``abort``, ``pause``
...) are safe from any thread: they only set the trainer's events.

A trainer reports through ``observer(event)`` on the engine thread: the front end hands the
event over to its own thread and never blocks there. A human judge asks through
:class:`PromptBridge`, which hands a ``JudgeRequest`` to the front end and blocks the engine
thread on its future.
"""

from __future__ import annotations

import gc
import queue
import signal
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, Callable

from tui_trainer.config import Config
from tui_trainer.errors import TrainerError, one_line
from tui_trainer.events import JudgeRequest, RunState, Verdict

ENGINE_CLEANUP_WAIT = 30.0  # seconds to let the engine thread release MLX after the last run

__all__ = ["ENGINE_CLEANUP_WAIT", "Runner", "RunResult", "PromptBridge", "skip_answer", "resolve", "stop_signals"]


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


class PromptBridge:
    """The Prompter protocol (tui_trainer.plugins.judge) for a front end on another thread.

    Called on the engine thread: it builds a JudgeRequest, hands it to the front end with
    ``deliver`` (non-blocking; False when the front end is gone) and blocks on
    ``request.future``. After ``close()`` every question, pending or new, is answered 'skip'
    so the engine never waits on a front end that will not answer.
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


@dataclass
class RunResult:
    """How a run ended: its final RunState, or the one-line error that ended it, and the exit code
    (0; 2 for bad input, a TrainerError; 1 for anything else, a lost rank included)."""

    state: RunState | None
    error: str | None
    exit_code: int
    quiet: bool = False  # an error another process reports (rank 0 of a data-parallel job)


class Runner:
    """One engine thread and the run on it.

    ``observer(event)`` gets every engine event and ``on_ended(RunResult)`` the end of each run,
    both on the engine thread. ``start`` hands a run to the thread; ``warm`` makes it import
    MLX and the trainer ahead of the first run.
    """

    def __init__(self, observer: Callable[[Any], None], on_ended: Callable[[RunResult], None]):
        self._observer = observer
        self._on_ended = on_ended
        self._jobs: queue.Queue[tuple | str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.trainer: Any = None
        self.started = False  # a run has been handed over (and maybe ended)
        self.worker_done = threading.Event()  # set while no run is going
        self.worker_done.set()
        self.engine_stopped = threading.Event()  # the engine thread has cleaned up and ended
        self.engine_stopped.set()
        self.stop_requested = threading.Event()
        self.abort_requested = False

    # ---------------------------------------------------------------- the thread
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self.engine_stopped.clear()
            self._thread = threading.Thread(target=self._loop, name="tui-trainer-engine", daemon=True)
            self._thread.start()

    def warm(self) -> None:
        """Import MLX and the trainer on the engine thread now (a run's first progress comes sooner)."""
        self._ensure_thread()
        self._jobs.put("warm")

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the engine thread (after the run in flight, if any); its result or error
        comes back in the returned Future. For MLX work outside training: chat replies, eval."""
        future: Future = Future()
        self._ensure_thread()
        self._jobs.put(("call", fn, future))
        return future

    def start(self, config: Config, *, resume: bool = False, prompter: Any = None) -> None:
        """Hand a run to the engine thread (returns at once)."""
        self.stop_requested.clear()
        self.abort_requested = False
        self.worker_done.clear()
        self.started = True
        self._ensure_thread()
        self._jobs.put((config, resume, prompter))

    @property
    def run_active(self) -> bool:
        return self.started and not self.worker_done.is_set()

    def close(self, wait: float | None = None) -> bool:
        """End the engine thread after the run in flight (``engine_stopped`` is set when it has);
        with ``wait``, wait up to that many seconds for it. True once it has ended. Whoever started
        the thread must close it before the interpreter exits: MLX aborts the process if a thread's
        streams are torn down at exit."""
        if self._thread is None:
            return True
        self._jobs.put(None)
        return self.engine_stopped.wait(wait) if wait is not None else self.engine_stopped.is_set()

    def _loop(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                if job == "warm":
                    import tui_trainer.engine.trainer  # noqa: F401  MLX, mlx-lm: imported ahead of the run
                    continue
                if job[0] == "call":
                    _, fn, future = job
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except BaseException as exc:  # noqa: BLE001  handed to whoever waits
                            future.set_exception(exc)
                    del job, fn, future
                    gc.collect()
                    continue
                result = self._run_one(*job)
                try:
                    self._on_ended(result)
                except Exception:  # noqa: BLE001  a front end that is gone must not kill the thread
                    pass
        finally:
            _release_engine_thread()
            self.engine_stopped.set()

    def _run_one(self, config: Config, resume: bool, prompter: Any) -> RunResult:
        trainer = None
        try:
            from tui_trainer.run import build_run

            trainer = build_run(config, observer=self._observer, prompter=prompter, resume=resume)
            self.trainer = trainer
            if self.abort_requested:
                trainer.abort()
            elif self.stop_requested.is_set():
                trainer.stop()
            return RunResult(trainer.run(), None, 0)
        except Exception as exc:  # reported as one line; the traceback (and its frames) go now
            code = getattr(exc, "exit_code", 2 if isinstance(exc, TrainerError) else 1)  # a lost rank: 1
            return RunResult(None, one_line(exc), code,
                             quiet=bool(getattr(exc, "quiet", False)))
        finally:
            self.trainer = None
            del trainer
            gc.collect()  # free the engine's arrays on the thread that made them
            self.worker_done.set()

    # ---------------------------------------------------------------- controls (any thread)
    def stop(self) -> bool:
        """Stop after the step in flight (it completes and is checkpointed); True the first time."""
        first = not self.stop_requested.is_set()
        self.stop_requested.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.stop()  # sets events only
        return first

    def abort(self) -> bool:
        """Stop now: abandon the step in flight; the last completed step is kept. True the first time."""
        first = not self.abort_requested
        self.abort_requested = True
        self.stop_requested.set()
        trainer = self.trainer
        if trainer is not None:
            trainer.abort()
        return first

    def pause(self) -> None:
        if self.trainer is not None:
            self.trainer.pause()

    def resume(self) -> None:
        if self.trainer is not None:
            self.trainer.resume()

    @property
    def paused(self) -> bool:
        return bool(getattr(self.trainer, "paused", False))

    def request_checkpoint(self) -> None:
        if self.trainer is not None:
            self.trainer.request_checkpoint()


def stop_signals(handler: Callable[[int], None], names=("SIGHUP", "SIGTERM")) -> Callable[[], None]:
    """Call ``handler(signum)`` on each named signal (main thread only); returns a function that
    puts the previous handlers back. A run stopped by a signal exits 128 + its number."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            signum = getattr(signal, name, None)
            if signum is not None:
                previous[signum] = signal.signal(signum, lambda s, _f: handler(s))

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


def _release_engine_thread() -> None:
    """End-of-thread cleanup for MLX, on the engine thread, never on a UI thread.

    MLX wants the streams a thread created destroyed by that thread
    (``mx.clear_streams()``); otherwise they are torn down at interpreter exit,
    after the thread is gone, and the process aborts ("terminate called without
    an active exception", exit 134) after a run that went well.
    """
    import sys

    mx = sys.modules.get("mlx.core")  # loaded by the trainer on this thread, if it got that far
    if mx is None:
        return
    try:
        mx.synchronize()
        mx.clear_streams()
    except Exception:  # cleanup must never mask the run's own outcome
        pass
