"""Benchmark: data-parallel scaling, 1 process vs `tui-trainer train --launch N` on this machine,
and a paper estimate of the communication for 2, 4 and 8 machines.

Both runs: the default config on the embedded SmolLM2-135M-Instruct (4 prompts x 4 samples a
step, 2 PPO epochs of minibatch 4: 8 optimizer steps, so 8 gradient all-reduces a step), a
rules judge, ``--steps`` steps of which the first is a warm-up. One process gets every core as
BLAS threads; N ranks get cores / N threads each, so both use the machine alike. From
metrics.jsonl: seconds per step, samples per second and, for the ranks, each rank's busy time
(step time minus time spent waiting in collectives) and its rollout / judge seconds.

The paper estimate: each all-reduce moves the trainable gradient (LoRA + value head, float32) with
a ring all-reduce, 2 (N - 1) / N x its bytes in and out of every machine; time = bytes / link
bandwidth + 2 (N - 1) x the link's latency, per all-reduce, x 8 a step. Links: 10 GbE (1.25 GB/s,
50 us) and Thunderbolt 5 (80 Gb/s = 10 GB/s, 10 us), nominal figures.

Usage: python bench/scaling.py [--steps 3] [--ranks 2] [--max-new-tokens 32] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Several machines"
LINKS = {"10 GbE": (1.25e9, 50e-6), "Thunderbolt 5": (10e9, 10e-6)}


def run(ranks: int, steps: int, new_tokens: int, cores: int) -> dict:
    """One training run; its measured steps' metrics and wall time."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"scaling-{ranks}-")) / "run"
    cmd = [sys.executable, "-m", "tui_trainer", "train", "--headless", "--steps", str(steps), "--run-dir",
           str(run_dir), "--max-new-tokens", str(new_tokens), "--save-every", "0"]
    if ranks > 1:
        cmd += ["--launch", str(ranks)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(max(1, cores // ranks)))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{ranks} rank(s): exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"ranks": ranks, "wall": wall, "steps": [m for m in metrics if "time_step" in m][1:]}


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def gradient_bytes() -> tuple[int, int]:
    """(trainable parameters of the default config, their float32 bytes)."""
    from tui_trainer.config import Config
    from tui_trainer.embedded import default_model_path
    from tui_trainer.engine.models import load_policy
    from tui_trainer.engine.policy import Policy
    from mlx.utils import tree_flatten

    model, _ = load_policy(str(default_model_path()))
    policy = Policy(model, Config().adapter)
    n = sum(v.size for _, v in tree_flatten(policy.trainable_parameters()))
    return n, 4 * n


def estimate(grad_bytes: int, step_seconds: float, reduces: int = 8) -> list[str]:
    lines = ["| machines | bytes in and out of each machine per step | " + " | ".join(
        f"{name}: seconds per step (share of a {step_seconds:.0f} s step / N)" for name in LINKS) + " |",
        "|---:|---:|" + "---:|" * len(LINKS)]
    for n in (2, 4, 8):
        moved = 2 * (n - 1) / n * grad_bytes * reduces
        cells = []
        for bandwidth, latency in LINKS.values():
            seconds = moved / bandwidth + reduces * 2 * (n - 1) * latency
            cells.append(f"{seconds * 1000:.1f} ms ({100 * seconds / (step_seconds / n):.2f}%)")
        lines.append(f"| {n} | {moved / 2**20:.1f} MiB | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="steps per run, the first a warm-up (default 3)")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel run (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="response length (default 32)")
    p.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    one = run(1, args.steps, args.max_new_tokens, cores)
    many = run(args.ranks, args.steps, args.max_new_tokens, cores)
    params, grad = gradient_bytes()
    t1, tn = mean(s["time_step"] for s in one["steps"]), mean(s["time_step"] for s in many["steps"])
    s1, sn = mean(s["samples_per_second"] for s in one["steps"]), mean(s["samples_per_second"] for s in many["steps"])
    split = []
    for r in range(args.ranks):
        busy = mean(s.get(f"time_busy/{r}", float("nan")) for s in many["steps"])
        roll = mean(s.get(f"time_rollout/{r}", float("nan")) for s in many["steps"])
        judge = mean(s.get(f"time_judge/{r}", float("nan")) for s in many["steps"])
        split.append(f"rank {r}: busy {busy:.1f} s (rollout {roll:.1f} s, judge {judge:.2f} s), "
                     f"waiting {tn - busy:.1f} s")
    lines = [
        SECTION, "",
        f"`python bench/scaling.py --steps {args.steps} --ranks {args.ranks} --max-new-tokens "
        f"{args.max_new_tokens}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
        f"{cores} CPU cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end. Default "
        f"config on the embedded model (4 prompts x 4 samples, {args.max_new_tokens} new tokens), the first step "
        "a warm-up. One process: every core as BLAS threads; the ranks share the cores (ring backend on "
        "localhost).", "",
        "| run | seconds / step | samples / s | speed-up |", "|---|---:|---:|---:|",
        f"| 1 process | {t1:.1f} | {s1:.2f} | 1.00x |",
        f"| {args.ranks} ranks (`--launch {args.ranks}`) | {tn:.1f} | {sn:.2f} | {t1 / tn:.2f}x |", "",
        "Per-rank split of the ranks' step: " + "; ".join(split) + ".", "",
        f"Paper estimate for machines of this speed: {params / 1e6:.2f}M trainable parameters (LoRA + value "
        f"head) = {grad / 2**20:.2f} MiB of float32 gradient per all-reduce, 8 all-reduces a step; each "
        f"machine computes 1/N of a {t1:.0f} s step (the one-process step above).", "",
        *estimate(grad, t1),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(ROOT / "bench" / "RESULTS.md", SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
