"""Benchmark: does the default loop learn, inside PPO's trust region? Curves per mode, and sweeps.

Each run is the default config (embedded SmolLM2-135M-Instruct, embedded prompts, the
built-in ``rules`` judge: a 20-word length target) with a few keys changed, for ``--steps``
steps, in its own process (``--jobs`` at a time, one BLAS thread each). Per step it records
the judge's score, the KL to the reference, the update's approx_kl and clip fraction, and
the policy's entropy. A run passes when, as the issue "it must learn" asks:

* the median approx_kl per step is <= 0.05 and the median clip fraction <= 0.15;
* the score rises by more than twice its spread in the first window (mean of the last
  ``--window`` steps minus mean of the first ``--window`` steps > 2 x std of the first window).
  The score is the trainer's fixed evaluation set (config ``eval_every: 1``: the first 16
  prompts, one sample each, the same draw every step), so the bar follows the policy and not
  the luck of the 4 prompts a step draws; the training samples' score is reported next to it;
* the KL to the reference stays < 5 nats.

Commands::

    python bench/learning.py sweep --steps 30 --grid actor_lr=1e-5,3e-6 --grid adapter.scale=20,2
    python bench/learning.py sweep --steps 30 --point "actor_lr=3e-5 adapter.scale=2" --point "num_samples=4"
    python bench/learning.py curves --steps 50            # every mode at its defaults, table + PNG

Raw per-step records go to ``bench/out/learning/<name>.json`` with the resolved config (a run
already there is not repeated, so a sweep can be resumed; delete the folder after changing a
default); the records behind bench/RESULTS.md are kept in ``bench/records/``; ``curves`` writes its table and picture
(``bench/learning.png``, matplotlib from the ``bench`` extra) into bench/RESULTS.md, ``sweep``
its table (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402  bench/results.py

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "learning"
KEYS = ("score_mean", "eval_score", "kl", "approx_kl", "clip_fraction", "entropy", "time_step", "time_evaluation")
MODES = {  # name -> config overrides
    "ppo": {},
    "pairwise (ppo objective)": {"mode": "pairwise"},
    "pairwise (studio objective)": {"mode": "pairwise", "pairwise_objective": "studio"},
    "rloo": {"mode": "rloo"},
    "grpo": {"mode": "grpo"},
}


def run_one(overrides: dict, steps: int, seed: int, eval_every: int = 1) -> dict:
    """In the child: train ``steps`` steps of the default config + overrides; per-step records.
    ``eval_every``: the trainer's own fixed evaluation set (config ``eval_every``) every N steps."""
    from tui_trainer.engine.blas import ensure_fast_blas

    ensure_fast_blas()
    from tui_trainer import events as ev
    from tui_trainer.config import load_config
    from tui_trainer.run import build_run

    cfg = load_config(None, {"eval_every": eval_every, **overrides, "steps": steps, "seed": seed, "save_every": 0,
                             "run_dir": tempfile.mkdtemp(prefix="learning-")})
    records: list[dict] = []

    def observe(event):
        if isinstance(event, ev.StepMetrics):
            records.append({k: float(event.values[k]) for k in KEYS if k in event.values})
            # pairwise: score_mean is the verdicts' mean (+1/-1: always 0); the judge's own score is
            # what shows learning
            if "score/rules" in event.values and cfg.mode == "pairwise":
                records[-1]["score_mean"] = float(event.values["score/rules"])
            r = records[-1]
            ev_text = f"eval {r['eval_score']:.3f} " if "eval_score" in r else ""
            print(f"{name_of(overrides, seed)} step {len(records)}/{steps}: score {r['score_mean']:.3f} {ev_text}"
                  f"approx_kl {r['approx_kl']:.3f} clip {r['clip_fraction']:.3f} kl {r['kl']:.2f} "
                  f"{r['time_step']:.0f}s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    state = build_run(cfg, observer=observe).run()
    from tui_trainer.config import config_to_dict

    resolved = {k: v for k, v in config_to_dict(cfg).items() if k != "run_dir"}
    return {"overrides": overrides, "seed": seed, "config": resolved, "steps": records, "status": state.status,
            "wall_seconds": time.perf_counter() - t0}


def name_of(overrides: dict, seed: int) -> str:
    parts = [f"{k}={v}" for k, v in sorted(overrides.items())] or ["defaults"]
    return ",".join(parts) + f",seed={seed}"


def launch(jobs: list[tuple[dict, int]], steps: int, parallel: int) -> dict[str, dict]:
    """Run each (overrides, seed) in a child process, ``parallel`` at a time; cached in OUT."""
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    todo = []
    for overrides, seed in jobs:
        name = name_of(overrides, seed)
        path = OUT / f"{name.replace('/', '_')}-{steps}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
        else:
            todo.append((name, path, overrides, seed))
    running: list[tuple[str, Path, subprocess.Popen, float]] = []
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1" if parallel > 1 else os.environ.get("OPENBLAS_NUM_THREADS", "2")}
    while todo or running:
        while todo and len(running) < parallel:
            name, path, overrides, seed = todo.pop(0)
            proc = subprocess.Popen([sys.executable, __file__, "child", json.dumps(overrides), str(steps), str(seed),
                                     str(path)], env=env)
            running.append((name, path, proc, time.time()))
            print(f"started {name} ({len(todo)} waiting)", file=sys.stderr, flush=True)
        time.sleep(2)
        for item in list(running):
            name, path, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode == 0 and path.exists():
                results[name] = json.loads(path.read_text())
                print(f"done {name} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            else:
                print(f"FAILED {name} (exit {proc.returncode})", file=sys.stderr, flush=True)
    return results


def windows(values: list[float], window: int) -> dict:
    """Mean of the first and last ``window`` values, the first window's spread (population std), the rise."""
    first, last = values[:window], values[-window:]
    out = {"first": statistics.fmean(first), "last": statistics.fmean(last),
           "spread": statistics.pstdev(first) if len(first) > 1 else 0.0}
    out["rise"] = out["last"] - out["first"]
    return out


def summary(res: dict, window: int) -> dict:
    """The run's verdict. The rise bar is taken on the fixed evaluation set's score when the run
    measured it every step (it moves with the policy only), else on the training score (which
    also moves with the prompts each step draws); the training score is reported either way."""
    steps = res["steps"]
    train = windows([s["score_mean"] for s in steps], window)
    measured = all("eval_score" in s for s in steps)
    bar = windows([s["eval_score"] for s in steps], window) if measured else train
    out = {
        "steps": len(steps), "measure": "eval" if measured else "train", **bar,
        "train": train,
        "approx_kl": statistics.median(s["approx_kl"] for s in steps),
        "clip_fraction": statistics.median(s["clip_fraction"] for s in steps),
        "kl_max": max(s["kl"] for s in steps), "kl_last": steps[-1]["kl"],
        "entropy_first": steps[0]["entropy"], "entropy_last": steps[-1]["entropy"],
        "step_seconds": statistics.median(s["time_step"] for s in steps),
    }
    out["pass"] = (out["approx_kl"] <= 0.05 and out["clip_fraction"] <= 0.15 and out["rise"] > 2 * out["spread"]
                   and out["kl_max"] < 5.0)
    return out


def _rise(w: dict) -> str:
    return f"{w['first']:.3f} -> {w['last']:.3f} ({w['rise']:+.3f} / {2 * w['spread']:.3f})"


def table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| run | median approx_kl | median clip | score first -> last (rise / 2x first spread) | "
             "training score, the same | KL to ref, max / last | entropy first -> last | s/step | pass |",
             "|---|---:|---:|---|---|---|---|---:|---|"]
    for label, s in rows:
        scored = f"{_rise(s)} {'eval set' if s['measure'] == 'eval' else 'training'}"
        lines.append(f"| {label} | {s['approx_kl']:.3f} | {s['clip_fraction']:.3f} | {scored} | {_rise(s['train'])} | "
                     f"{s['kl_max']:.2f} / {s['kl_last']:.2f} | {s['entropy_first']:.2f} -> {s['entropy_last']:.2f} | "
                     f"{s['step_seconds']:.1f} | {'yes' if s['pass'] else 'no'} |")
    return lines


def header(cmd: str) -> str:
    return (f"`python bench/learning.py {cmd}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end.")


def plot(curves: dict[str, dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no picture", file=sys.stderr)
        return False
    panels = [("eval_score", "judge score, fixed evaluation set"), ("score_mean", "judge score, training samples"), ("kl", "KL to reference (nats)"), ("approx_kl", "approx_kl of the update"),
              ("clip_fraction", "clip fraction"), ("entropy", "entropy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for label, res in curves.items():
            ys = [s.get(key, float("nan")) for s in res["steps"]]
            ax.plot(range(1, len(ys) + 1), ys, label=label, linewidth=1.2)
        if key == "approx_kl":
            ax.axhline(0.05, color="grey", linestyle="--", linewidth=0.8)
        if key == "clip_fraction":
            ax.axhline(0.15, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    c.add_argument("overrides")
    c.add_argument("steps", type=int)
    c.add_argument("seed", type=int)
    c.add_argument("out")
    for name in ("sweep", "curves"):
        s = sub.add_parser(name)
        s.add_argument("--steps", type=int, default=50 if name == "curves" else 30)
        s.add_argument("--seeds", default="0", help="comma-separated seeds")
        s.add_argument("--jobs", type=int, default=2, help="runs at a time (one BLAS thread each when > 1)")
        s.add_argument("--window", type=int, default=6, help="steps in the first / last score window")
        s.add_argument("--set", action="append", default=[], help="key=value for every run")
        s.add_argument("--no-write", dest="write", action="store_false",
                       help="print the table only (default: also write it into bench/RESULTS.md)")
        if name == "sweep":
            s.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (one axis of the grid)")
            s.add_argument("--point", action="append", default=[],
                           help="one run's overrides, 'key=v key=v' (instead of or besides --grid)")
        else:
            s.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
            s.add_argument("--mode-steps", action="append", default=[], metavar="MODE=N",
                           help="steps for one mode instead of --steps (e.g. 'rloo=30')")
            s.add_argument("--record", action="append", default=[], metavar="LABEL=PATH",
                           help="also show a run recorded earlier (a JSON of bench/records/), under LABEL")
    args = p.parse_args(argv)
    if args.cmd == "child":
        res = run_one(json.loads(args.overrides), args.steps, args.seed)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, args.out)
        return 0 if res["status"] == "finished" else 1

    fixed = dict(kv.split("=", 1) for kv in args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.cmd == "sweep":
        axes = [(kv.split("=", 1)[0], kv.split("=", 1)[1].split(",")) for kv in args.grid]
        combos = [dict(zip([a for a, _ in axes], vals)) for vals in itertools.product(*[v for _, v in axes])] \
            if axes else []
        combos += [dict(kv.split("=", 1) for kv in point.split()) for point in args.point]
        jobs = [({**fixed, **combo}, seed) for combo in combos for seed in seeds]
    else:
        chosen = [m.strip() for m in args.modes.split(",")]
        jobs = [({**fixed, **MODES[m]}, seed) for m in chosen for seed in seeds]
    # steps per run: --steps, or a mode's own count from --mode-steps
    own = dict(kv.rsplit("=", 1) for kv in getattr(args, "mode_steps", []))
    steps_of = {name_of(o, s): int(own.get(m, args.steps)) for m in (chosen if args.cmd == "curves" else [])
                for o, s in [({**fixed, **MODES[m]}, seed) for seed in seeds]}
    results = {}
    for n_steps in sorted({steps_of.get(name_of(o, s), args.steps) for o, s in jobs}):
        group = [(o, s) for o, s in jobs if steps_of.get(name_of(o, s), args.steps) == n_steps]
        results.update(launch(group, n_steps, args.jobs))
    rows = [(name_of(o, s), summary(results[name_of(o, s)], args.window)) for o, s in jobs
            if name_of(o, s) in results]
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    if args.cmd == "sweep":
        section = "## Learning sweep"
        lines = [section, "", header(cmd), ""] + table(rows)
    else:
        section = "## Learning curves"
        label_of = {name_of({**fixed, **MODES[m]}, s): f"{m} (seed {s})" for m in MODES for s in seeds}
        curves = {label_of[n]: results[n] for n in results}
        lines = [section, "", header(cmd), "",
                 f"Default config, {args.steps} steps per mode unless the command says otherwise; windows of "
                 f"{args.window} steps. approx_kl and clip fraction are per-step means over the update's "
                 "minibatches. The pairwise modes' score is the rules judge's own score (their verdict "
                 "rewards average 0 by construction).", ""]
        recorded = [kv.split("=", 1) for kv in args.record]
        for label, path in recorded:
            curves[label] = json.loads(Path(path).read_text())
        lines += table([(label_of[n], s) for n, s in rows]
                       + [(label, summary(curves[label], args.window)) for label, _ in recorded])
        drawn = plot(curves, ROOT / "bench" / "learning.png")
        if drawn:
            lines += ["", "![learning curves](learning.png)"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(ROOT / "bench" / "RESULTS.md", section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
