"""`tui-trainer metrics RUN_DIR [--csv | --plot KEYS [--png FILE]]`: a run's metrics.jsonl, read back.

No option: a table of the main metrics per step (``--keys`` chooses the columns). ``--csv``: every
metric as CSV on stdout. ``--plot score_mean,kl``: curves in the terminal (plotext); with
``--png FILE`` the same curves as a PNG (matplotlib: ``pip install 'tui-trainer[bench]'`` or
plain ``matplotlib``).
"""

from __future__ import annotations

import argparse
import math
import sys

DEFAULT_KEYS = ["score_mean", "kl", "approx_kl", "clip_fraction", "entropy", "value_loss", "response_length",
                "eos_rate", "time_step"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (holding metrics.jsonl)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print every metric as CSV")
    out.add_argument("--plot", metavar="KEYS", help="comma-separated metric names to draw, e.g. score_mean,kl")
    p.add_argument("--png", metavar="FILE", help="with --plot: write the curves to a PNG (matplotlib) instead")
    p.add_argument("--keys", metavar="KEYS", help="table columns (comma-separated); default: the main metrics")
    p.add_argument("--last", type=int, default=0, help="table: only the last N steps")


def _keys(text: str | None, rows: list[dict], default: list[str]) -> list[str]:
    from tui_trainer.config import _did_you_mean
    from tui_trainer.errors import ConfigError

    known = sorted({k for r in rows for k in r if k != "step"})
    if not text:
        return [k for k in default if k in known]
    keys = [k.strip() for k in text.split(",") if k.strip()]
    for k in keys:
        if k not in known:
            raise ConfigError(f"no metric {k!r} in this run{_did_you_mean(k, known)}")
    return keys


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tui_trainer.errors import ConfigError
    from tui_trainer.tracking import metrics_csv, read_metrics

    run_dir = Path(args.run)
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"{args.run}: no metrics.jsonl (not a run directory, or no step has finished)")
    rows = read_metrics(run_dir)
    if not rows:
        raise ConfigError(f"{args.run}: metrics.jsonl holds no steps yet")
    if args.png and not args.plot:
        raise ConfigError("--png needs --plot KEYS")
    if args.csv:
        sys.stdout.write(metrics_csv(rows))
        return 0
    if args.plot:
        keys = _keys(args.plot, rows, [])
        if args.png:
            return _png(rows, keys, args.png)
        import plotext as plt

        plt.clear_figure()
        plt.subplots(len(keys), 1)
        for i, key in enumerate(keys, 1):
            plt.subplot(i, 1)
            plt.plot(*_series(rows, key), marker="braille")
            plt.title(key)
            plt.xlabel("step")
        plt.show()
        return 0
    from rich.console import Console
    from rich.table import Table

    from tui_trainer.commands.train import _fmt

    keys = _keys(args.keys, rows, DEFAULT_KEYS)
    table = Table(title=f"{run_dir} ({len(rows)} steps)", title_justify="left")
    table.add_column("step", justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    for r in rows[-args.last:] if args.last > 0 else rows:
        table.add_row(str(r["step"]), *("-" if r.get(k) is None else _fmt(r[k]) for k in keys))
    Console(highlight=False).print(table)
    return 0


def _png(rows: list[dict], keys: list[str], path: str) -> int:
    from tui_trainer.errors import ConfigError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--png needs matplotlib, which is not installed: pip install matplotlib "
                          "(or draw in the terminal without --png)") from None
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(*_series(rows, key))
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    print(f"written: {path}")
    return 0
