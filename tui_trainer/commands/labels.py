"""`tui-trainer labels export RUN_DIR --format dpo [-o FILE]`: human labels for DPO."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser("export", help="export labels.jsonl as {prompt, chosen, rejected}",
                       description="Export a run's human labels; ties, skips and ratings are left out.")
    e.add_argument("run_dir", metavar="RUN_DIR", help="run directory (or a labels.jsonl file)")
    e.add_argument("--format", choices=["dpo"], default="dpo", help="output format (default: dpo)")
    e.add_argument("-o", "--output", help="write here (atomically) instead of standard output")


def run(args: argparse.Namespace) -> int:
    from tui_trainer.plugins.builtin.labels import LABELS_FILE, read_labels, to_dpo, write_jsonl_atomic

    src = Path(args.run_dir)
    path = src if src.is_file() else src / LABELS_FILE
    records, bad = read_labels(path)
    rows = to_dpo(records)
    if args.output:
        write_jsonl_atomic(args.output, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    note = f", {bad} unreadable line(s) skipped" if bad else ""
    where = f" to {args.output}" if args.output else ""
    print(f"exported {len(rows)} pair(s) of {len(records)} label(s){where}{note}", file=sys.stderr)
    return 0
