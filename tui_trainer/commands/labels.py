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
    e.add_argument("-o", "--output", help="write here (atomically) instead of standard output ('-': stdout); "
                   "a new file or a regular file other than the labels themselves")


def check_output(output: str, source: Path) -> None:
    """Refuse an output that would destroy something: the labels being exported, a directory,
    or anything but a regular file (a device node, a pipe: the atomic rename would replace it)."""
    from tui_trainer.errors import TrainerError
    from tui_trainer.fileio import nearest_existing

    out = Path(output)
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise TrainerError(f"{output}: is a directory; give a file name for the export")
        if not out.is_file():
            raise TrainerError(f"{output}: not a regular file (a device, a pipe or a socket); "
                               "write to a file, or leave -o out for standard output")
        if source.exists() and out.resolve() == source.resolve():
            raise TrainerError(f"{output}: is the labels file being exported; writing there would replace "
                               "the human verdicts; choose another file")
    above = nearest_existing(out.parent)
    if not above.is_dir():
        raise TrainerError(f"{output}: cannot write there ({above} is not a directory)")


def run(args: argparse.Namespace) -> int:
    from tui_trainer.plugins.builtin.labels import LABELS_FILE, read_labels, to_dpo, write_jsonl_atomic

    src = Path(args.run_dir)
    path = src if src.is_file() else src / LABELS_FILE
    if args.output == "-":
        args.output = None
    if args.output:
        check_output(args.output, path)
    records, bad = read_labels(path)
    rows = to_dpo(records)
    if bad:
        shown = ", ".join(str(n) for n in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        print(f"{path}: skipped unreadable line(s) {shown}", file=sys.stderr)
    if args.output:
        write_jsonl_atomic(args.output, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    note = f", {len(bad)} unreadable line(s) skipped" if bad else ""
    where = f" to {args.output}" if args.output else ""
    print(f"exported {len(rows)} pair(s) of {len(records)} label(s){where}{note}", file=sys.stderr)
    return 0
