"""`tui-trainer watch RUN_DIR`: the dashboard on a run directory another process is writing (a run
started headless on a server, a job of several ranks), read-only.

The app reads the new lines of ``metrics.jsonl`` and ``samples.jsonl`` every half second
(tui_trainer/follow.py); the run's ``config.yaml`` gives the number of steps and the KL estimator.
Nothing in the directory is written, and the run is not controlled from here: ``q`` leaves.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory being written (metrics.jsonl, samples.jsonl)")


def watch_config(run: str):
    """The run's config (its config.yaml, else the defaults), pointing at ``run``; ConfigError (one line)
    when ``run`` is not a run directory."""
    from tui_trainer.config import Config, load_config
    from tui_trainer.errors import ConfigError

    path = Path(run)
    if not path.is_dir():
        raise ConfigError(f"{run}: no such run directory")
    saved = path / "config.yaml"
    if not saved.is_file() and not (path / "metrics.jsonl").is_file():
        raise ConfigError(f"{run}: not a run directory (no config.yaml, no metrics.jsonl)")
    config = load_config(saved) if saved.is_file() else Config()
    return dataclasses.replace(config, run_dir=str(path))


def run(args: argparse.Namespace) -> int:
    config = watch_config(args.run)
    if not sys.stdout.isatty():
        from tui_trainer.errors import ConfigError

        raise ConfigError("watch shows the dashboard and needs a terminal; for the numbers: tui-trainer metrics "
                          f"{args.run}")
    from tui_trainer.follow_app import run_follow

    return run_follow(config)
