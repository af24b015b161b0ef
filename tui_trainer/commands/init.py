"""`tui-trainer init [PATH]`: write a commented default config (every key, one comment each)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui_trainer.config import write_commented_config
from tui_trainer.errors import ConfigError

DEFAULT_PATH = "tui-trainer.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=DEFAULT_PATH, metavar="PATH",
                   help=f"file to write (default: {DEFAULT_PATH})")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name, e.g. {path / DEFAULT_PATH}")
    if path.exists() and not args.force:
        raise ConfigError(f"{path} already exists; use --force to overwrite it")
    try:
        write_commented_config(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None
    print(f"wrote {path}; edit it, then run: tui-trainer train --config {path}")
    return 0
