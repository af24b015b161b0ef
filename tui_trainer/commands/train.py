"""`tui-trainer train`: the Textual app, or `--headless` with a rich progress bar and a metrics line per step."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tui_trainer.config import add_config_arguments

    add_config_arguments(p)
    p.add_argument("--headless", action="store_true", help="train without the TUI (progress bar + metrics lines)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--start", action="store_true", help="app: skip the setup screen and start training")
    p.add_argument("--launch", type=int, metavar="N", help="data-parallel: N processes on this machine "
                   "(runs mlx.launch -n N; on a terminal the app follows the job, else --headless)")
    p.add_argument("--hosts", metavar="FILE", help="data-parallel: one process per host of an mlx.launch "
                   "hostfile (JSON; runs mlx.launch --hostfile FILE; the app follows it, as with --launch)")
    p.add_argument("--backend", choices=BACKENDS, help="with --launch / --hosts: mlx.launch's backend "
                   "(default: the hostfile's, else nccl with CUDA, else ring)")


BACKENDS = ("ring", "jaccl", "jaccl-ring", "mpi", "nccl")
QUIET_GRACE = 10.0  # seconds a rank whose error rank 0 reports waits before it ends


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else "inf" if v > 0 else "-inf"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}" if abs(v) < 1e7 else f"{v:.3g}"
    return str(v)


LINE_KEYS = [("score", "score_mean"), ("eval", "eval_score"), ("kl", "kl"), ("clip", "clip_fraction"), ("akl", "approx_kl"),
             ("ent", "entropy"), ("vloss", "value_loss"), ("len", "response_length"), ("eos", "eos_rate"),
             ("gen tok/s", "generation_tokens_per_second"), ("samples/s", "samples_per_second")]


def metrics_line(values: dict) -> str:
    from tui_trainer.widgets.format import slowest_rank_text

    parts = [f"step {values['step']:>4}"]
    parts += [f"{label} {_fmt(values[key])}" for label, key in LINE_KEYS if key in values]
    # a reward model learning from the person (reward judge, learn_from: human)
    parts += [f"{key.replace('/heldout_accuracy', ' rm acc').replace('/', ' ')} {_fmt(v)}" for key, v in values.items()
              if key.endswith(("/labels", "/heldout_accuracy", "/agreement"))]
    parts.append(f"t {values.get('time_rollout', 0):.1f}/{values.get('time_judge', 0):.1f}/"
                 f"{values.get('time_update', 0):.1f}s")
    slow = slowest_rank_text(values)  # several ranks: which one the others wait for
    if slow:
        parts.append(slow)
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    from tui_trainer.config import config_from_args

    config = config_from_args(args)
    if args.resume:  # continue the run as it was configured; what the command line gives changes it
        from pathlib import Path

        saved = Path(config.run_dir) / "config.yaml"
        if saved.is_file():
            config = config_from_args(args, base=saved)
    if args.launch is not None or args.hosts is not None:
        from tui_trainer.commands.launch import launch

        mode, note = launch_mode(args, config, sys.stdout.isatty())
        if note:
            print(f"tui-trainer: {note}", file=sys.stderr, flush=True)
        return launch(args) if mode == "headless" else follow_launch(args, config)
    from tui_trainer.engine.distributed import world

    ranks = world()  # started by mlx.launch: one rank of a data-parallel job
    if ranks.active and not ranks.is_main:  # the app and the console are rank 0's
        return run_headless(config, resume=args.resume, quiet=f"rank {ranks.rank}")
    if ranks.active and not sys.stdout.isatty():  # mlx.launch pipes the ranks' output: no app there
        args.headless = True
    if not args.headless:
        from tui_trainer.app import run_app

        return run_app(config, config_path=getattr(args, "config", None), resume=args.resume, start=args.start)
    return run_headless(config, resume=args.resume)


def asks_a_person(config) -> list[str]:
    """The judges of ``config`` that ask a person (the human judge; a reward model learning from one)."""
    return [j.name for j in config.judges
            if j.name == "human" or (j.options or {}).get("learn_from") == "human"]


def launch_mode(args: argparse.Namespace, config, tty: bool) -> tuple[str, str | None]:
    """How ``train --launch`` / ``--hosts`` runs: ("follow", None) — the job in the background and the
    app following its run directory — when the command has a terminal and no --headless; else
    ("headless", note): mlx.launch in the foreground, as before. A judge that asks a person keeps the
    headless path (its questions go to rank 0's console through mlx.launch's stdin, which the app
    cannot answer); ``note`` says so in one line."""
    if args.headless or not tty:
        return "headless", None
    person = asks_a_person(config)
    if person:
        return "headless", (f"judge {', '.join(person)} asks a person on rank 0's console, which the app cannot "
                            "answer for a launched job: running headless")
    return "follow", None


def follow_launch(args: argparse.Namespace, config) -> int:
    """The job in the background (mlx.launch's output to RUN_DIR/launch.log) and the app on its run directory."""
    from pathlib import Path

    from tui_trainer.commands.launch import BackgroundJob
    from tui_trainer.engine.runfiles import check_run_dir
    from tui_trainer.follow_app import run_follow

    run_dir = Path(config.run_dir)
    check_run_dir(run_dir)
    job = BackgroundJob.from_args(args, run_dir / LAUNCH_LOG)
    return run_follow(config, job=job, ranks=job.ranks)


LAUNCH_LOG = "launch.log"


def run_headless(config, resume: bool = False, quiet: str | None = None) -> int:
    """``quiet``: a rank other than 0, named so: no output but its own error (one line)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from tui_trainer import events as ev
    from tui_trainer.plugins.builtin.human import ConsolePrompter
    from tui_trainer.runner import ENGINE_CLEANUP_WAIT, Runner, RunResult, stop_signals
    from tui_trainer.text import printable
    from tui_trainer.widgets.format import PHASE_LABELS, format_duration, progress_text

    console = Console(stderr=False, quiet=quiet is not None)
    live = console.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                        console=console, transient=False)
    task = progress.add_task("training", total=config.steps, unit="steps", eta="")
    # the step in flight: a second bar on a terminal, one plain line per phase otherwise
    phase_task = progress.add_task("", total=None, unit="", eta="") if live else None
    shown: dict[str, Any] = {"phase": None, "times": [], "total": config.steps}

    def observe(event: Any) -> None:
        if isinstance(event, ev.Progress):
            if phase_task is not None:
                unit = event.unit + (f" · {event.rate:.1f} gen tok/s" if event.phase == "rollout" and event.rate
                                     else "") + (f" · {event.detail}" if event.detail else "")
                progress.update(phase_task, total=max(event.total, 1), completed=event.done, unit=unit,
                                description=f"step {event.step} {PHASE_LABELS.get(event.phase, event.phase)}"
                                if event.step else "loading",
                                eta=f"step ETA {format_duration(event.eta)}" if event.eta is not None else "")
            elif (event.step, event.phase) != shown["phase"]:
                shown["phase"] = (event.step, event.phase)
                console.print(progress_text(event), markup=False, highlight=False)
        elif isinstance(event, ev.StepMetrics):
            progress.console.print(metrics_line(event.as_record()), markup=False, highlight=False)
            shown["times"].append(event.values.get("time_step", 0.0))
            per = sum(shown["times"][-10:]) / len(shown["times"][-10:])
            progress.update(task, completed=event.step,
                            eta=f"ETA {format_duration(per * max(shown['total'] - event.step, 0))}")
        elif isinstance(event, ev.LogMessage):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            progress.console.print(Text(printable(event.message), style=style), highlight=False)
        elif isinstance(event, ev.RunState):
            if event.total_steps:  # num_train_epochs becomes a number of steps once the prompts are read
                shown["total"] = event.total_steps
                progress.update(task, total=event.total_steps)
            if event.status == "running":
                progress.update(task, completed=event.step)

    prompter = _PausingPrompter(ConsolePrompter(console=progress.console), progress)
    ended: list = []
    runner = Runner(observer=observe, on_ended=ended.append)  # the same engine thread as the app's
    interrupted = {"sigint": 0, "code": 0}

    def stop_now(signum: int) -> None:
        """SIGTERM / SIGHUP (a dropped SSH session) / the first Ctrl-C: abandon the step in flight;
        the run ends on a checkpoint of its last completed step. A second Ctrl-C stops waiting.
        The exit code is 128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
        interrupted["code"] = interrupted["code"] or 128 + signum
        if signum == signal.SIGINT:
            interrupted["sigint"] += 1
            if interrupted["sigint"] > 1:
                raise KeyboardInterrupt
        runner.abort()

    restore_signals = stop_signals(stop_now, names=("SIGHUP", "SIGTERM", "SIGINT"))
    try:
        with progress:
            runner.start(config, resume=resume, prompter=prompter)
            try:
                while not runner.worker_done.wait(0.2):
                    pass
            except KeyboardInterrupt:  # the second Ctrl-C: the step in flight is being abandoned already
                runner.abort()
                runner.worker_done.wait()
                console.print(f"interrupted; the checkpoint of the last completed step is in {config.run_dir}; "
                              "continue with --resume")
                return 130
            finally:
                if phase_task is not None:
                    progress.remove_task(phase_task)
    finally:
        runner.close(wait=ENGINE_CLEANUP_WAIT)
        restore_signals()
    result = ended[0] if ended else RunResult(None, "the engine stopped", 1)
    if result.error is not None:
        if not result.quiet:
            where = f"{quiet}: " if quiet else ""
            print(f"tui-trainer: error: {where}{printable(result.error)}", file=sys.stderr)
        else:  # rank 0 says it: mlx.launch stops every rank when one ends in error, so give it time to
            import time

            time.sleep(QUIET_GRACE)
        return result.exit_code
    state = result.state
    if state.message.startswith("interrupted"):
        console.print(f"stopped at step {state.step} ({state.message}); the checkpoint of step {state.step} "
                      f"is in {config.run_dir}; continue with --resume")
        return interrupted["code"] or 130
    console.print(f"{state.status} at step {state.step}; run directory {config.run_dir}")
    if interrupted["code"]:  # a signal between steps: the run stopped cleanly, but not by itself
        return interrupted["code"]
    return 0 if state.status in ("finished", "stopped") else 1


class _PausingPrompter:
    """The console prompter with the live progress bar stopped while a person answers."""

    def __init__(self, inner, progress):
        self.inner, self.progress = inner, progress

    def _ask(self, fn, *args, **kwargs):
        self.progress.stop()
        try:
            return fn(*args, **kwargs)
        finally:
            self.progress.start()

    def compare(self, prompt, a, b, *, judge, step):
        return self._ask(self.inner.compare, prompt, a, b, judge=judge, step=step)

    def rate(self, prompt, completion, *, judge, step, scale=(0, 9)):
        return self._ask(self.inner.rate, prompt, completion, judge=judge, step=step, scale=scale)
