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
import time


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
    from tui_trainer.errors import ConfigError
    from tui_trainer.evaluation import EvalResult, mean, outcome_of_scores, outcome_of_verdict
    from tui_trainer.plugins.builtin.human import ConsolePrompter
    from tui_trainer.plugins.manager import build_judge_set, get_plugin_manager
    from tui_trainer.plugins.options import parse_assignments

    if args.num_prompts < 1:
        raise ConfigError(f"-n must be >= 1, got {args.num_prompts}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")

    def progress(phase: str, done: int, total: int) -> None:
        print(f"eval: {phase} {done}/{total}", file=sys.stderr, flush=True)

    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    from tui_trainer.engine.trained import held_out_prompts, load_trained, locate_checkpoint, run_config

    ckpt, run_dir = locate_checkpoint(args.run)  # bad paths fail before any model loads
    cfg = run_config(run_dir)
    if args.judge:
        options = parse_assignments(args.option)
        specs = [{"name": name, "options": options} for name in args.judge]
    else:
        if args.option:
            raise ConfigError("--option needs --judge NAME (the run's own judges keep their options)")
        specs = cfg.judges
    js = build_judge_set(specs, prompter=ConsolePrompter(console), run_dir=None, failure="drop",
                         retries=cfg.judge_retries, timeout=cfg.judge_timeout,
                         log=lambda m: console.print(f"[yellow]{m}[/]"), registry=get_plugin_manager())
    try:
        progress("loading", 0, 1)
        trained = load_trained(args.run)
        progress("loading", 1, 1)
        prompts, rule = held_out_prompts(trained, args.data, args.num_prompts)
        max_new = args.max_new_tokens or trained.config.max_new_tokens
        t0 = time.perf_counter()
        from tui_trainer.engine.trained import sample_both

        texts = [p.text for p in prompts]
        done_trained, done_base = sample_both(trained, [p.ids for p in prompts], max_new_tokens=max_new,
                                              temperature=args.temperature, seed=args.seed,
                                              batch_size=max(1, args.batch_size), progress=progress)
        t_sample = time.perf_counter() - t0
        pointwise = [m for m in js.members if m.info.pointwise]
        js.progress = lambda key, done, total: progress(f"judging ({key})", done, total)
        per_judge: dict = {}
        tr_scores: list = []
        base_scores: list = []
        if pointwise:
            n = len(prompts)
            columns = [p.columns for p in prompts] * 2 if any(p.columns for p in prompts) else None
            res = js.score(texts * 2, done_trained + done_base, columns=columns)
            tr_scores, base_scores = res.scores[:n], res.scores[n:]
            outcomes = [outcome_of_scores(a, b) for a, b in zip(tr_scores, base_scores)]
            per_judge = {k: {"trained": mean(v[:n]), "base": mean(v[n:])} for k, v in res.per_judge.items()}
        else:  # every judge is pairwise: compare trained (a) with base (b)
            outcomes = []
            for i, (p, a, b) in enumerate(zip(texts, done_trained, done_base)):
                outcomes.append(outcome_of_verdict(js.compare(p, a, b).choice))
                progress(f"judging ({js.names[0]})", i + 1, len(texts))
        info = {"checkpoint": str(trained.checkpoint), "step": trained.step, "judges": js.names, "data": rule,
                "temperature": args.temperature, "max_new_tokens": max_new, "seed": args.seed,
                "base_model": trained.config.model or "embedded SmolLM2-135M-Instruct",
                "seconds": {"sampling": round(t_sample, 2), "total": round(time.perf_counter() - t0, 2)}}
        result = EvalResult(texts, done_trained, done_base, outcomes, tr_scores, base_scores, per_judge, info)
        out_dir = run_dir if run_dir is not None else trained.checkpoint
        json_path, md_path = result.save(out_dir)
    finally:
        js.close()
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
