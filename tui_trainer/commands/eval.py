"""`tui-trainer eval RUN_DIR [--judge NAME] [--data HELD_OUT] [-n 100] [--json]`: trained vs base.

For each held-out prompt, one completion from the trained policy (adapter on) and one from the
base model (the same weights with the adapter off), both greedy by default; the judge(s) decide:
pointwise judges score both (the higher weighted score wins), pairwise-only judges compare them.
Prints the win rate of trained over base (ties count half) with its 95% Wilson interval, per-judge
mean scores and a side-by-side table; writes eval.json and eval.md into the run directory.
Progress (phase, i/N) goes to stderr, so ``--json`` keeps stdout to one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--judge", action="append", default=None, metavar="NAME",
                   help="judge by name (repeatable); default: the run's own judges")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the --judge given (repeatable)")
    p.add_argument("--data", default=None, metavar="HELD_OUT",
                   help="prompts to evaluate on (file, saved dataset or hub name); default: the run's prompts it "
                        "never trained on (else the last N of its data, flagged as not held out)")
    p.add_argument("-n", "--num-prompts", type=int, default=100, help="at most this many prompts (default 100)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    p.add_argument("--show", type=int, default=5, help="examples in the side-by-side table printed (default 5)")
    p.add_argument("--json", action="store_true", help='print only {"win_rate": ..., "ci95": [lo, hi], "n": ...}')


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tui_trainer.evalrun import evaluate_run, judge_specs_for
    from tui_trainer.plugins.builtin.human import ConsolePrompter
    from tui_trainer.plugins.options import parse_assignments

    def progress(phase: str, done: int, total: int) -> None:
        print(f"eval: {phase} {done}/{total}", file=sys.stderr, flush=True)

    console = Console(stderr=True, highlight=False)
    specs = judge_specs_for(args.run, args.judge, parse_assignments(args.option))
    result, (json_path, md_path) = evaluate_run(
        args.run, judges=specs, data=args.data, n=args.num_prompts, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed, batch_size=args.batch_size,
        prompter=ConsolePrompter(console), progress=progress, log=lambda m: console.print(f"[yellow]{m}[/]"))
    if args.json:
        print(json.dumps(result.summary()))
        return 0
    _print(result, json_path, md_path, args.show)
    return 0


def _print(result, json_path, md_path, show: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from tui_trainer.text import printable

    console = Console(highlight=False)
    lo, hi = result.ci95
    rate = "n/a (every comparison skipped)" if result.win_rate is None else f"{result.win_rate:.3f}"
    console.print(f"[bold]win rate of trained over base: {rate}[/]  95% CI [{lo:.3f}, {hi:.3f}]  n = {result.n}  "
                  f"(wins {result.count('win')}, losses {result.count('loss')}, ties {result.count('tie')}, "
                  f"skipped {result.count('skip')}; ties count half)")
    console.print(f"prompts: {result.info['data']}; judge(s): {', '.join(result.info['judges'])}")
    if result.per_judge:
        t = Table(title="mean score per judge", title_justify="left")
        for c in ("judge", "trained", "base"):
            t.add_column(c)
        for k, v in result.per_judge.items():
            t.add_row(k, *("-" if v[s] is None else f"{v[s]:.4g}" for s in ("trained", "base")))
        console.print(t)
    if show > 0:
        t = Table(title="examples (trained | base)", title_justify="left", show_lines=True)
        for c in ("prompt", "trained", "base", "outcome"):
            t.add_column(c, overflow="fold", ratio=None if c == "outcome" else 1)
        for p, a, b, o in list(zip(result.prompts, result.trained, result.base, result.outcomes))[:show]:
            t.add_row(printable(p), printable(a), printable(b), o)
        console.print(t)
    console.print(f"written: {json_path}, {md_path}")
