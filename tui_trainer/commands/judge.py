"""`tui-trainer judge NAME --prompt P --a A [--b B] [--option k=v ...] [--column k=v ...]`: try a judge."""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="judge name (see `tui-trainer plugins`)")
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--a", required=True, help="a completion (scored alone, or compared with --b)")
    p.add_argument("--b", help="a second completion: compare a with b instead of scoring a")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="a judge option (repeatable); `tui-trainer plugins -v` lists them")
    p.add_argument("--column", "-c", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset column of the prompt's row, e.g. --column answer='#### 42' (repeatable)")
    p.add_argument("--run-dir", help="run directory (the human judge appends to its labels.jsonl)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before the call counts as failed")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tui_trainer.errors import ConfigError
    from tui_trainer.plugins.builtin.human import ConsolePrompter
    from tui_trainer.plugins.manager import build_judge_set, get_plugin_manager
    from tui_trainer.plugins.options import parse_assignments

    console = Console(highlight=False)
    options = parse_assignments(args.option)
    js = build_judge_set([{"name": args.name, "options": options}], prompter=ConsolePrompter(console),
                         run_dir=args.run_dir, failure="stop", retries=0, timeout=args.timeout,
                         log=None, registry=get_plugin_manager())
    try:
        start = time.perf_counter()
        if args.b is None:
            if not js.members[0].info.pointwise:
                raise ConfigError(f"judge {args.name} is pairwise: scoring a single completion needs --b")
            columns = parse_assignments(args.column, what="--column")
            res = js.score([args.prompt], [args.a], columns=[columns])
            value = res.scores[0]
            text = "skipped" if value is None else f"{value:.4f}"
            console.print(f"score: {text}  ({time.perf_counter() - start:.2f}s)")
        else:
            if not js.can_compare:
                raise ConfigError(f"judge {args.name} cannot compare two completions (it is pointwise): "
                                  "drop --b to score --a")
            v = js.compare(args.prompt, args.a, args.b)
            conf = "" if v.confidence is None else f"  confidence {v.confidence:.3f}"
            console.print(f"verdict: {v.choice}{conf}  ({time.perf_counter() - start:.2f}s)")
    finally:
        js.close()
    return 0
