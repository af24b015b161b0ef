"""`tui-trainer chat RUN_DIR`: talk to a trained run in the terminal (screens/chat.py).

The model (the run's base with the adapter of its latest checkpoint, or of the checkpoint folder
given) is loaded and run on the engine thread (runner.Runner.submit), never on the UI thread.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--system", default=None, help="a system message for the chat")


def run(args: argparse.Namespace) -> int:
    from tui_trainer.engine.trained import locate_checkpoint
    from tui_trainer.screens.chat import ChatApp

    locate_checkpoint(args.run)  # a bad path: one line, before the screen opens
    app = ChatApp(args.run, max_new_tokens=args.max_new_tokens, temperature=args.temperature, system=args.system)
    app.run()
    if app.error is not None:  # the model could not be loaded: said on screen, and here in one line
        return _fail(app.error)
    return 0


def _fail(error: str) -> int:
    import sys

    print(f"tui-trainer: error: {error}", file=sys.stderr)
    return 2
