"""Command line: `tui-trainer` (the app), `train --headless`, `doctor`, `init`, `plugins`, `judge`, `labels`,
`chat`, `eval`, `export`, `watch`, `metrics`, `install`, `uninstall`, `reward`.

Each subcommand lives in ``tui_trainer/commands/<name>.py`` as ``add_arguments(parser)``
and ``run(args) -> int``. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tui_trainer.engine.blas import ensure_fast_blas

COMMANDS = {
    "train": "train a policy (the app, or --headless with a progress bar)",
    "rollout": "sample completions from a model and print them",
    "doctor": "show platform, MLX device, BLAS in use, default model, llama.cpp version",
    "init": "write a commented default config",
    "plugins": "list judge plugins: name, version, judges, status",
    "judge": "try a judge from the shell",
    "labels": "export human labels (e.g. for DPO)",
    "chat": "chat with a trained run (its latest checkpoint) in the terminal",
    "eval": "win rate of a trained run over its base model under a judge, on held-out prompts",
    "watch": "the dashboard on a run directory another process is writing (read-only)",
    "metrics": "a run's metrics: a table, CSV, or curves in the terminal (or a PNG)",
    "install": "install a judge plugin package into tui-trainer's own environment (pip)",
    "uninstall": "uninstall a judge plugin package from tui-trainer's environment (pip)",
    "export": "export a checkpoint: a llama.cpp LoRA GGUF, a merged GGUF (+ Ollama Modelfile), a fused mlx-lm model",
    "reward": "reward models: train (Bradley-Terry), eval, score",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("tui-trainer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tui-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tui-trainer {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"tui_trainer.commands.{name}")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    ensure_fast_blas()
    from tui_trainer.errors import TrainerError

    parser = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        argv = ["train", *argv]
        args = parser.parse_args(argv)
    args.argv = argv  # as given (train --launch runs the same command on every rank)
    code = 1
    try:
        code = int(args._module.run(args) or 0)
    except TrainerError as exc:
        from tui_trainer.text import printable

        print(f"tui-trainer: error: {printable(exc)}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("tui-trainer: interrupted", file=sys.stderr)
        code = 130
    finally:
        if args.command == "train":
            from tui_trainer.commands.launch import record_exit

            record_exit(code)  # a rank of `train --launch`: its exit code for the launcher
    return code


if __name__ == "__main__":
    sys.exit(main())
