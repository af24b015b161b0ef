"""Follow a run directory that another process writes (a job started by ``train --launch``, a
headless run on a server): its ``metrics.jsonl`` and ``samples.jsonl`` become the engine events
the dashboard already shows (``StepMetrics``, lists of ``Sample``), so the app needs no second view.

:class:`JsonlTail` reads a growing JSON-lines file from where it stopped, complete lines only: a
last line without its ``\\n`` (the writer is half way through it) is left for the next poll. A
file that is replaced (``cut_to_step`` on ``--resume`` rewrites it atomically: a new inode) or
cut shorter is read again from its start, and rows of steps already shown are left out.

:class:`RunFollower` polls both files; ``poll()`` returns the new events in file order, samples
of one step in one list (the trainer's own event for a step's samples), then a ``CheckpointSaved``
for each new folder under ``checkpoints/`` (filled under a temporary name and renamed: a folder
named by its step is complete; on the first poll only the newest). Plain Python, no UI:
the app calls it from a timer on its own thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tui_trainer.events import CheckpointSaved, Sample, StepMetrics

__all__ = ["JsonlTail", "RunFollower", "sample_from_record"]

READ_LIMIT = 8 << 20  # bytes read in one poll at most (a long run's backlog comes over several polls)


class JsonlTail:
    """New complete lines of a JSON-lines file, as dicts (lines that do not parse are skipped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self._inode: tuple[int, int] | None = None
        self.restarted = False  # the last read began again at the start of a replaced file

    def read(self) -> list[dict]:
        self.restarted = False
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        inode = (st.st_dev, st.st_ino)
        if self._inode is not None and (inode != self._inode or st.st_size < self.offset):
            self.offset = 0
            self.restarted = True
        self._inode = inode
        if st.st_size <= self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(st.st_size - self.offset, READ_LIMIT))
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:  # not one whole line yet
            if len(data) >= READ_LIMIT:  # a single line longer than the limit: skip it
                self.offset += len(data)
            return []
        self.offset += end + 1
        rows = []
        for line in data[:end].split(b"\n"):
            try:
                rec = json.loads(line.decode("utf-8", errors="replace"))
            except ValueError:
                continue
            if isinstance(rec, dict):
                rows.append(rec)
        return rows


def _step(rec: dict) -> int | None:
    step = rec.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def sample_from_record(rec: dict) -> Sample | None:
    """A ``samples.jsonl`` row (RunFiles' format) as a Sample; None when it is not one."""
    step = _step(rec)
    if step is None:
        return None
    scores = rec.get("scores") if isinstance(rec.get("scores"), dict) else {}
    return Sample(step=step, prompt=str(rec.get("prompt", "")), completion=str(rec.get("completion", "")),
                  score=_number(rec.get("score")),
                  scores={str(k): v for k, v in ((k, _number(v)) for k, v in scores.items()) if v is not None},
                  finished=bool(rec.get("finished", True)))


class RunFollower:
    """The events in a run directory's files since the last ``poll()``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.metrics = JsonlTail(self.run_dir / "metrics.jsonl")
        self.samples = JsonlTail(self.run_dir / "samples.jsonl")
        self.last_step = 0  # the last step whose metrics were handed out
        self._metric_steps: set[int] = set()
        self._sample_seen: int = 0  # the last step whose samples were handed out
        self._checkpoints: set[str] | None = None  # checkpoint folders seen (None: not looked yet)

    def poll(self) -> list[Any]:
        """New StepMetrics and lists of Samples (a step's samples together), metrics first."""
        events: list[Any] = []
        for rec in self.metrics.read():
            step = _step(rec)
            if step is None or step in self._metric_steps:  # a re-read file: shown already
                continue
            self._metric_steps.add(step)
            self.last_step = max(self.last_step, step)
            events.append(StepMetrics(step, {k: v for k, v in rec.items() if k != "step"}))
        rows = self.samples.read()
        seen = self._sample_seen if self.samples.restarted else -1  # a re-read file: those steps are shown
        batch: list[Sample] = []
        for rec in rows:
            sample = sample_from_record(rec)
            if sample is None or sample.step <= seen:
                continue
            if batch and batch[-1].step != sample.step:
                events.append(batch)
                batch = []
            batch.append(sample)
        if batch:
            events.append(batch)
        for event in events:
            if isinstance(event, list):
                self._sample_seen = max(self._sample_seen, event[0].step)
        events += self._new_checkpoints()
        return events

    def _new_checkpoints(self) -> list[CheckpointSaved]:
        root = self.run_dir / "checkpoints"
        try:
            names = {p.name for p in root.iterdir() if p.name.isdigit() and p.is_dir()}
        except OSError:
            names = set()
        first = self._checkpoints is None
        new = sorted(names - (self._checkpoints or set()), key=int)
        self._checkpoints = names
        if first:
            new = new[-1:]
        return [CheckpointSaved(int(name), str(root / name)) for name in new]
