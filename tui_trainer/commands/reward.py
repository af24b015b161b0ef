"""`tui-trainer reward train|eval|score`: Bradley-Terry reward models.

    reward train --data FILE_OR_RUN_DIR [--data ...] -o DIR [--model M] [--epochs N] ...
    reward eval DIR --data FILE_OR_RUN_DIR [--json]     accuracy, mean margin, pairs
    reward score DIR --prompt P --completion C [--raw]  the score (normalised unless --raw)

DIR is a directory written by ``reward train`` or a Hugging Face *ForSequenceClassification reward
model (a directory or a cached hub repo id).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tui_trainer.config import RewardTrainConfig, dataclass_arguments

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a reward model on preference pairs",
                       description="Train a Bradley-Terry reward model: loss = -log sigmoid(r(chosen) - r(rejected)).")
    t.add_argument("--data", action="append", required=True, metavar="FILE_OR_RUN_DIR",
                   help="{prompt, chosen, rejected} file (.jsonl .json .parquet .csv), a hub dataset id or a "
                        "saved dataset folder, a run directory or its labels.jsonl (repeatable)")
    _dataset_arguments(t)
    t.add_argument("-o", "--output", required=True, metavar="DIR", help="reward-model directory to write")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from DIR.checkpoint "
                   "(same --data and flags; --epochs may grow)")
    dataclass_arguments(t, RewardTrainConfig)

    e = sub.add_parser("eval", help="accuracy and mean margin of a reward model on preference pairs",
                       description="Score every pair: accuracy (share ranked right), mean margin r_c - r_r.")
    e.add_argument("path", metavar="DIR", help="reward-model directory, or a Hugging Face reward model")
    e.add_argument("--data", action="append", required=True, metavar="FILE_OR_RUN_DIR",
                   help="pairs to evaluate (same forms as for train; repeatable)")
    _dataset_arguments(e)
    e.add_argument("--model", default=None, help="base model (default: the one recorded in DIR)")
    e.add_argument("--batch-size", type=int, default=8, help="inputs per forward pass")
    e.add_argument("--json", action="store_true", help='print {"accuracy": ..., "margin": ..., "pairs": ...}')

    s = sub.add_parser("score", help="score one completion with a reward model",
                       description="Print r(prompt, completion), normalised with the training statistics.")
    s.add_argument("path", metavar="DIR", help="reward-model directory, or a Hugging Face reward model")
    s.add_argument("--prompt", required=True, help="the user's prompt")
    s.add_argument("--completion", required=True, help="the reply to score")
    s.add_argument("--model", default=None, help="base model (default: the one recorded in DIR)")
    s.add_argument("--raw", action="store_true", help="the raw reward, not normalised (a Hugging Face reward "
                                                       "model's is always raw)")


def _dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="split of a dataset source (hub id or saved dataset), with "
                                                   "datasets' slicing: train_prefs, train[:2000] (default: train)")
    p.add_argument("--subset", default=None, help="subset (config name) of a dataset source; default: its own")


def _read_pairs(args: argparse.Namespace):
    """The pairs of ``--data``; a hub download is announced and followed on stderr."""
    from tui_trainer.preferences import read_preferences

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def progress(done: int, total: int, unit: str, detail: str) -> None:
        if total and done >= total:
            print(f"{detail}: {done}/{total} {unit}", file=sys.stderr, flush=True)

    return read_preferences(args.data, args.split, args.subset, progress=progress, log=log)


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "eval": _eval, "score": _score}[args.action](args)


# ----------------------------------------------------------------------------- train

def metrics_line(step: int, values: dict) -> str:
    parts = [f"step {step:>4}", f"epoch {int(values.get('epoch', 0))}"]
    for label, key in (("loss", "loss"), ("acc", "accuracy"), ("eval loss", "eval_loss"),
                       ("eval acc", "eval_accuracy"), ("eval margin", "eval_margin")):
        if key in values:
            parts.append(f"{label} {values[key]:.3g}")
    return "  ".join(parts)


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from tui_trainer import events as ev
    from tui_trainer.config import RewardTrainConfig, dataclass_from_args
    from tui_trainer.engine.models import locate_model
    from tui_trainer.engine.reward import check_output_dir
    from tui_trainer.text import printable
    from tui_trainer.widgets.format import progress_text

    cfg = dataclass_from_args(RewardTrainConfig, args)
    # cheap checks first: bad data or a bad model path fail before anything loads
    check_output_dir(args.output)
    locate_model(cfg.model)
    data = _read_pairs(args)
    console = Console()
    live = console.is_terminal
    for note in data.notes:
        console.print(printable(note), markup=False, highlight=False, style="dim")
    console.print(f"{len(data.pairs)} preference pair(s) from {', '.join(data.sources)}", markup=False,
                  highlight=False)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), console=console, transient=False)
    task = progress.add_task("loading", total=None, unit="") if live else None
    shown: dict[str, Any] = {"phase": None}

    def observe(event: Any) -> None:
        if isinstance(event, ev.Progress):
            if task is not None:
                progress.update(task, total=max(event.total, 1), completed=event.done,
                                unit=f"{event.unit} · {event.detail}" if event.detail else event.unit,
                                description="loading" if event.phase == "loading" else "reward model")
            elif (event.phase, event.detail if event.phase == "loading" else "") != shown["phase"]:
                shown["phase"] = (event.phase, event.detail if event.phase == "loading" else "")
                text = progress_text(event) if event.phase == "loading" else \
                    f"training: step {event.done}/{event.total} · {event.detail}"
                console.print(text, markup=False, highlight=False)
        elif isinstance(event, ev.StepMetrics):
            progress.console.print(metrics_line(event.step, event.values), markup=False, highlight=False,
                                   soft_wrap=True)
        elif isinstance(event, ev.LogMessage):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            progress.console.print(Text(printable(event.message), style=style), highlight=False)

    from tui_trainer.engine.reward_train import train_reward_model

    try:
        with progress:
            summary = train_reward_model(cfg, data.pairs, args.output, observer=observe, resume=args.resume)
    except KeyboardInterrupt:
        from tui_trainer.engine.reward_train import checkpoint_dir

        where = checkpoint_dir(args.output)
        saved = f"the last checkpoint is in {where}; continue with --resume" if where.exists() else \
            "no checkpoint yet (one is written at the end of each epoch, or every --save-every steps)"
        console.print(f"interrupted; {saved}", markup=False, highlight=False, soft_wrap=True)
        return 130
    final = summary["final"]
    held = (f"held-out accuracy {final['eval_accuracy']:.3f}, margin {final['eval_margin']:.3g} on "
            f"{summary['eval_pairs']} pair(s)") if "eval_accuracy" in final else "no held-out pairs"
    console.print(f"done: {summary['steps']} step(s), {held}; reward model in {args.output}", markup=False,
                  highlight=False, soft_wrap=True)
    return 0


# ----------------------------------------------------------------------------- eval / score

def _eval(args: argparse.Namespace) -> int:
    import mlx.core as mx

    from tui_trainer.engine import reward as R
    from tui_trainer.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    R.reward_model_info(args.path)  # a bad directory fails before the data is read
    data = _read_pairs(args)
    scorer = R.RewardScorer.load(args.path, args.model, batch_size=args.batch_size)
    prompts = [p.messages for p in data.pairs]
    rc = mx.array(scorer.rewards(prompts, [p.chosen for p in data.pairs]))
    rr = mx.array(scorer.rewards(prompts, [p.rejected for p in data.pairs]))
    result = {"accuracy": R.pair_accuracy(rc, rr).item(), "margin": R.mean_margin(rc, rr).item(),
              "pairs": len(data.pairs)}
    if args.json:
        print(json.dumps(result))
    else:
        for note in data.notes:
            print(note, file=sys.stderr)
        print(f"accuracy {result['accuracy']:.4f}  margin {result['margin']:.4g}  pairs {result['pairs']}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from tui_trainer.engine.reward import RewardScorer

    scorer = RewardScorer.load(args.path, args.model)
    print(f"{scorer.rewards([args.prompt], [args.completion], normalised=not args.raw)[0]:.6g}")
    return 0
