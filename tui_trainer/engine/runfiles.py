"""The files of a run directory besides checkpoints: metrics, samples, labels, the lock.

* :class:`RunFiles` appends each step's metrics to ``metrics.jsonl`` and its samples to
  ``samples.jsonl`` as strict JSON (a number that is not finite is written as ``null``).
* :func:`cut_to_step` makes those files agree with the checkpoint a run (re)starts from:
  rows of later steps are removed (atomically), so after any kill / resume sequence every
  step appears once. Human labels of later steps are not thrown away: they move to a side
  file, ``labels.after-<step>.jsonl`` (a person's answers are worth keeping).
* :class:`RunLock` keeps two processes out of one run directory: an exclusive ``flock`` on
  ``.lock`` (the kernel drops it when the holder dies, so a stale lock cannot block), with
  the holder's pid in the file for the message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tui_trainer import events as ev
from tui_trainer.errors import TrainerError
from tui_trainer.fileio import atomic_write_text, nearest_existing

LOCK_FILE = ".lock"
CUT_FILES = ("metrics.jsonl", "samples.jsonl")
LABELS_FILE = "labels.jsonl"


def strict(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None (JSON ``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def json_line(record: dict) -> str:
    """One line of strict JSON (never a bare NaN / Infinity token)."""
    return json.dumps(strict(record), allow_nan=False, ensure_ascii=False) + "\n"


class RunFiles:
    """An observer that appends StepMetrics to metrics.jsonl and samples to samples.jsonl."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._metrics = open(run_dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")
        self._samples = open(run_dir / "samples.jsonl", "a", buffering=1, encoding="utf-8")

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.StepMetrics):
            self._metrics.write(json_line(event.as_record()))
        elif isinstance(event, list) and event and isinstance(event[0], ev.Sample):
            for s in event:
                self._samples.write(json_line({"step": s.step, "prompt": s.prompt, "completion": s.completion,
                                               "score": s.score, "scores": s.scores, "finished": s.finished}))

    def close(self) -> None:
        self._metrics.close()
        self._samples.close()


def check_run_dir(run_dir: Path) -> None:
    """Raise TrainerError (one line) unless ``run_dir`` is a directory or can be created as one.
    Writes nothing: the run directory is created only once the input has been checked."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise TrainerError(f"run_dir {path}: exists and is not a directory")
    above = nearest_existing(path)
    if not above.is_dir():
        raise TrainerError(f"run_dir {path}: cannot create it ({above} is a file, not a directory)")
    if not path.exists() and not os.access(above, os.W_OK | os.X_OK):
        raise TrainerError(f"run_dir {path}: cannot create it ({above} is not writable)")


def _step_of(line: str) -> int | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    step = rec.get("step") if isinstance(rec, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def cut_to_step(run_dir: Path, step: int) -> dict[str, int]:
    """Remove the rows of steps after ``step`` from the run's jsonl files; returns rows removed per file.

    A line that cannot be read (cut short by a kill) goes too: its step is unknown. Labels
    of later steps (and unreadable label lines) move to ``labels.after-<step>.jsonl``.
    """
    removed: dict[str, int] = {}
    for name in (*CUT_FILES, LABELS_FILE):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        keep, later = [], []
        for line in text.splitlines(keepends=True):
            if not line.strip():
                continue
            s = _step_of(line)
            (keep if s is not None and s <= step else later).append(line if line.endswith("\n") else line + "\n")
        if not later:
            continue
        if name == LABELS_FILE:
            side = Path(run_dir) / f"labels.after-{step}.jsonl"
            old = side.read_text(encoding="utf-8", errors="replace") if side.exists() else ""
            atomic_write_text(side, old + "".join(later))
        atomic_write_text(path, "".join(keep))
        removed[name] = len(later)
    return removed


class RunLock:
    """An exclusive lock on a run directory, held until :meth:`release` (or the process ends)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run without the lock
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TrainerError(f"{self.path.parent} is in use by another tui-trainer run (pid {holder}); "
                               "wait for it to end or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing drops the flock
                self._fd = None
