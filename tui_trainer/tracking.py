"""Experiment trackers (``report_to:``): observers of the engine's event stream, like metrics.jsonl.

* ``csv``: ``metrics.csv`` in the run directory, one row per step, every metric a column;
  rewritten atomically each step from ``metrics.jsonl`` (so after ``--resume`` it holds every
  step once, as metrics.jsonl does).
* ``tensorboard``: event files under ``tensorboard/`` in the run directory (tensorboardX;
  ``pip install 'tui-trainer[tensorboard]'``); view with ``tensorboard --logdir RUN_DIR/tensorboard``.
* ``wandb``: ``wandb.init`` + ``wandb.log`` per step (``pip install 'tui-trainer[wandb]'``); the run's
  config goes along; project ``tui-trainer`` unless ``WANDB_PROJECT`` says otherwise.

Plain Python, no MLX: the trainer opens them next to its run files (``open_trackers``), after
``check_trackers`` has made sure, before anything was written, that their packages are there.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from tui_trainer import events as ev
from tui_trainer.config import TRACKER_PACKAGES
from tui_trainer.errors import ConfigError
from tui_trainer.fileio import atomic_write_text

CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def check_trackers(names: list[str]) -> None:
    """A ConfigError (one line, naming the extra to install) for a tracker whose package is missing."""
    for name in names:
        if name in TRACKER_PACKAGES:
            module, extra = TRACKER_PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"report_to: {name} needs the {module} package, which is not installed: "
                                  f"pip install 'tui-trainer[{extra}]'")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (unreadable lines, e.g. one cut short by a kill, are left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                rows.append(rec)
    return rows


def resume_history(run_dir: str | Path) -> list[dict]:
    """The metrics a resumed run starts with: the rows of metrics.jsonl up to its latest checkpoint
    (the ones the trainer keeps; it cuts later rows when it starts)."""
    root = Path(run_dir) / "checkpoints"
    steps = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    if not steps:
        return []
    last = max(steps)
    return [r for r in read_metrics(run_dir) if r["step"] <= last]


def metrics_csv(rows: list[dict]) -> str:
    """``rows`` as CSV: a ``step`` column then every other key in order of first appearance."""
    columns: list[str] = ["step"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return out.getvalue()


class CsvTracker:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.rows = read_metrics(run_dir)  # a resumed run's earlier steps (already cut to its checkpoint)

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.StepMetrics):
            self.rows = [r for r in self.rows if r["step"] < event.step] + [event.as_record()]
            atomic_write_text(self.run_dir / CSV_FILE, metrics_csv(self.rows))

    def close(self) -> None:
        pass


def _finite(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardTracker:
    def __init__(self, run_dir: Path, start_step: int = 0):
        from tensorboardX import SummaryWriter

        # a resumed run: TensorBoard hides what an earlier process logged after the checkpoint
        purge = start_step + 1 if start_step else None
        # the file name holds the time in seconds: a suffix keeps a quick resume from overwriting the file
        self.writer = SummaryWriter(logdir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge,
                                    filename_suffix=f".{os.getpid()}-{start_step}")

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.StepMetrics):
            for key, value in _finite(event.values).items():
                self.writer.add_scalar(key, value, global_step=event.step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=None, dir=str(run_dir), config=config, name=Path(run_dir).name,
                              resume="allow")

    def __call__(self, event: Any) -> None:
        if isinstance(event, ev.StepMetrics):
            self.run.log(_finite(event.values), step=event.step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of ``report_to`` as one observer (with ``close``). A tracker that fails while
    the run goes on is dropped with one warning through ``log``: training does not stop for it.
    ``start_step``: the checkpoint a resumed run starts from (0 for a new run)."""

    def __init__(self, names: list[str], run_dir: Path, config: dict | None = None, log=None, start_step: int = 0):
        check_trackers(names)
        self.log = log
        self.live: dict[str, Any] = {}
        for name in names:
            if name == "csv":
                self.live[name] = CsvTracker(run_dir)
            elif name == "tensorboard":
                self.live[name] = TensorBoardTracker(run_dir, start_step)
            elif name == "wandb":
                self.live[name] = WandbTracker(run_dir, config or {})

    def __call__(self, event: Any) -> None:
        for name, tracker in list(self.live.items()):
            try:
                tracker(event)
            except Exception as exc:  # noqa: BLE001  a tracker must not end the run
                del self.live[name]
                if self.log is not None:
                    self.log(f"report_to: {name} failed and is switched off ({type(exc).__name__}: {exc})")

    def close(self) -> None:
        for tracker in self.live.values():
            try:
                tracker.close()
            except Exception:  # noqa: BLE001
                pass
        self.live.clear()
