"""`tui-trainer uninstall PKG...`: pip-uninstall judge plugins from tui-trainer's own environment."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("packages", nargs="+", metavar="PKG", help="the distribution name, e.g. tui-trainer-http-judge")


def run(args: argparse.Namespace) -> int:
    from tui_trainer.commands.install import pip
    from tui_trainer.errors import ConfigError

    if any(p.replace("_", "-").lower() == "tui-trainer" for p in args.packages):
        raise ConfigError("tui-trainer cannot uninstall itself; use pip (or pipx) for that")
    return pip(["uninstall", "-y", *args.packages])
