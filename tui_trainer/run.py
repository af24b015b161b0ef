"""A training run, assembled in one place: ``build_run(config, prompter=...)``.

The trainer (engine/) knows nothing of plugin machinery or data formats: it is handed
two builders, called during its start-up (so their progress and errors come out as the
run's own, before the model loads and before the run directory is created):

* ``judges(log)`` -> the JudgeSet of ``config.judges`` (plugins resolved, options checked);
* ``prompts()`` -> the raw prompt rows of ``config.data`` (read and checked, not tokenized:
  the trainer tokenizes them once it has the model's tokenizer); a hub dataset not yet cached
  is downloaded then, announced in the log and followed by "loading" progress events.

Front ends (the app's runner, ``train --headless``, benchmarks) call ``build_run``.
"""

from __future__ import annotations

from typing import Any, Callable

from tui_trainer.config import Config


def build_run(config: Config, *, observer: Callable[[Any], None] | None = None, prompter: Any = None,
              resume: bool = False, trainer_class: type | None = None):
    """The Trainer for ``config``, with its judges and prompts to build (call ``.run()``)."""
    from tui_trainer import events as ev
    from tui_trainer.data import read_rows
    from tui_trainer.engine.trainer import Trainer
    from tui_trainer.plugins.judgeset import MAX_ABS_SCORE
    from tui_trainer.plugins.manager import build_judge_set

    def judges(log: Callable[[str], None]):
        return build_judge_set(config.judges, prompter=prompter, run_dir=config.run_dir,
                               failure=config.judge_failure, retries=config.judge_retries,
                               timeout=config.judge_timeout, log=log,
                               # score_clip bounds the scores itself; else |score| > 1e6 is a judge failure
                               max_abs_score=None if config.score_clip is not None else MAX_ABS_SCORE,
                               extra={"model": config.model})

    def prompts():
        # a hub dataset that is not cached yet is downloaded here, at start-up: announced, with progress
        def progress(done: int, total: int, unit: str, detail: str) -> None:
            if observer is not None:
                observer(ev.Progress(0, "loading", done, total, unit, detail=detail))

        def log(message: str) -> None:
            if observer is not None:
                observer(ev.LogMessage("info", message))

        return read_rows(config.data, progress=progress, log=log)

    cls = trainer_class or Trainer
    return cls(config, observer=observer, resume=resume, judges=judges, prompts=prompts)
