"""`tui-trainer install PKG...`: pip-install judge plugins into tui-trainer's own environment (like `llm install`).

Runs ``sys.executable -m pip install`` (the interpreter tui-trainer runs in, whatever venv or pipx
home that is), with the BLAS preload variables removed from pip's environment (engine/blas.py:
``child_env``), then lists the judge plugins found afterwards.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("packages", nargs="+", metavar="PKG", help="a PyPI name, a path, a wheel or a VCS URL (as pip takes)")
    p.add_argument("-e", "--editable", action="store_true", help="install a local folder in editable mode")
    p.add_argument("-U", "--upgrade", action="store_true", help="upgrade to the newest version")
    p.add_argument("--no-deps", action="store_true", help="do not install the package's dependencies")


def run(args: argparse.Namespace) -> int:
    cmd = ["install"]
    if args.upgrade:
        cmd.append("--upgrade")
    if args.no_deps:
        cmd.append("--no-deps")
    for pkg in args.packages:
        cmd += ["-e", pkg] if args.editable else [pkg]
    return pip(cmd)


def pip(cmd: list[str]) -> int:
    """``python -m pip CMD`` in tui-trainer's interpreter; a failure is one line and exit code 2."""
    import subprocess
    import sys

    from tui_trainer.engine.blas import child_env
    from tui_trainer.errors import ConfigError

    proc = subprocess.run([sys.executable, "-m", "pip", *cmd], env=child_env())
    if proc.returncode != 0:
        raise ConfigError(f"pip {cmd[0]} failed (exit code {proc.returncode}); see pip's output above")
    import importlib

    from tui_trainer.plugins.manager import get_plugin_manager

    importlib.invalidate_caches()
    names = [f"{r.name} ({r.status})" for r in get_plugin_manager(refresh=True).plugins]
    print("judge plugins now: " + ", ".join(names))
    return 0
