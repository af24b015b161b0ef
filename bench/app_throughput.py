"""Training throughput inside the Textual app vs the headless Trainer, same config.

    python bench/app_throughput.py                    # tiny and small random llamas
    python bench/app_throughput.py --models tiny      # 2 x 32: Python-bound steps, UI share largest
    python bench/app_throughput.py --models small     # 4 x 256: compute-bound steps
    python bench/app_throughput.py --models embedded  # SmolLM2-135M (minutes per step on a small CPU)
    python bench/app_throughput.py --models PATH

Both runs use the real Trainer. The app run is the real TrainerApp (headless
Textual driver via run_test, 80x24, dashboard drawing as in a terminal); the
headless run calls Trainer.run() with a bare observer. Steps/s is measured from
the wall time between StepMetrics events on the engine thread, leaving out the
first step (warm-up). Runs alternate headless/app in pairs; the result is the
median of the per-pair ratios, so that load from other processes, which drifts
over minutes, cancels as far as it can. Also reported: process CPU seconds per
step (the app's includes its UI thread). Writes the "## App throughput" section
of bench/RESULTS.md (other sections kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

def _early_blas_threads() -> None:
    """--blas-threads N: set OPENBLAS_NUM_THREADS before the BLAS loads (same for both runs)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--blas-threads=") else (
            argv[i + 1] if arg == "--blas-threads" and i + 1 < len(argv) else None)
        if value is not None:
            os.environ["OPENBLAS_NUM_THREADS"] = value


_early_blas_threads()

from results import write_section  # noqa: E402  bench/results.py
from tui_trainer.engine.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()

from tui_trainer.config import Config, JudgeSpec  # noqa: E402
from tui_trainer.events import StepMetrics  # noqa: E402

SECTION = "## App throughput"


def rates(stamps: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """(steps/s, process CPU s/step, engine-thread CPU s/step) from the stamps taken at
    each StepMetrics (on the engine thread): wall, process CPU, engine thread CPU."""
    if len(stamps) < 3:
        raise SystemExit("need at least 3 steps to measure (the first is warm-up)")
    (w0, c0, t0), (w1, c1, t1) = stamps[1], stamps[-1]
    n = len(stamps) - 2
    return n / (w1 - w0), (c1 - c0) / n, (t1 - t0) / n


def stamp() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), time.thread_time()


def run_headless(cfg: Config) -> tuple[float, float, float]:
    from tui_trainer.run import build_run

    stamps: list[tuple[float, float, float]] = []

    def observer(event) -> None:
        if isinstance(event, StepMetrics):
            stamps.append(stamp())

    build_run(cfg, observer=observer).run()
    return rates(stamps)


def run_app(cfg: Config) -> tuple[float, float, float, float]:
    """As run_headless, plus the UI (main) thread's CPU seconds per step."""
    from tui_trainer.app import TrainerApp

    stamps: list[tuple[float, float, float]] = []
    ui: dict[str, float] = {}

    async def go() -> None:
        app = TrainerApp(cfg, start=True)
        forward = app._observe

        def observe(event) -> None:  # on the engine thread, as the app's own observer
            if isinstance(event, StepMetrics):
                stamps.append(stamp())
            forward(event)

        app._observe = observe
        async with app.run_test(size=(80, 24)) as pilot:
            while not app.run_ended:  # no pilot work while the run goes, as in a terminal
                if "cpu0" not in ui and len(stamps) >= 2:
                    ui["cpu0"], ui["n0"] = time.thread_time(), len(stamps)
                await asyncio.sleep(0.25)
            ui["cpu1"], ui["n1"] = time.thread_time(), len(stamps)
            if app.status != "finished":
                raise SystemExit(f"app run ended {app.status}: {app.error}")
            await pilot.press("q")

    asyncio.run(go())
    ui_per_step = (ui["cpu1"] - ui["cpu0"]) / max(1, ui["n1"] - ui["n0"]) if "cpu0" in ui else float("nan")
    return (*rates(stamps), ui_per_step)


MODELS = {
    "tiny": ("tiny random llama (2 layers, hidden 32)", {}),
    "small": ("small random llama (4 layers, hidden 256, MLP 768)",
              {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 768,
               "num_attention_heads": 8, "num_key_value_heads": 4}),
}


def make_config(model: str | None, run_dir: Path, steps: int) -> Config:
    return Config(model=model, run_dir=str(run_dir), steps=steps, save_every=0, seed=0,
                  batch_size=4, num_samples=2, max_new_tokens=16, ppo_epochs=1, minibatch_size=4,
                  judges=[JudgeSpec("rules")])


def bench_model(name: str, tmp: Path, steps: int | None, pairs: int) -> list[str]:
    """Run ``pairs`` headless/app pairs on model ``name``; the markdown lines for it."""
    if name in MODELS:
        from helpers import make_tiny_model_dir
        model_name, over = MODELS[name]
        model = str(make_tiny_model_dir(tmp / name, **over))
    elif name == "embedded":
        model, model_name = None, "embedded SmolLM2-135M-Instruct"
    else:
        model, model_name = name, name
    steps = steps or {"tiny": 30, "small": 8, "embedded": 4}.get(name, 8)
    load_before = os.getloadavg()[0]
    results: dict[str, list[tuple[float, ...]]] = {"headless": [], "app": []}
    for i in range(pairs):
        order = (("headless", run_headless), ("app", run_app))
        for kind, fn in (order if i % 2 == 0 else order[::-1]):
            res = fn(make_config(model, tmp / f"{name}-{kind}-{i}", steps))
            results[kind].append(res)
            extra = f", {res[3]:.4f} UI thread" if kind == "app" else ""
            print(f"{name} pair {i + 1} {kind:8s}: {res[0]:.3f} steps/s, CPU s/step {res[1]:.3f} process, "
                  f"{res[2]:.3f} engine thread{extra}", flush=True)
    load_after = os.getloadavg()[0]
    h = [r[0] for r in results["headless"]]
    a = [r[0] for r in results["app"]]
    ratios = [ai / hi for ai, hi in zip(a, h)]
    ratio = statistics.median(ratios)
    verdict = "within 5%" if ratio >= 0.95 else "NOT within 5%"
    cpu_h = statistics.median(r[1] for r in results["headless"])
    cpu_a = statistics.median(r[1] for r in results["app"])
    eng_h = statistics.median(r[2] for r in results["headless"])
    eng_a = statistics.median(r[2] for r in results["app"])
    ui_a = statistics.median(r[3] for r in results["app"])
    wall_h = 1 / statistics.median(h)
    print(f"{name}: app/headless = {ratio:.3f} ({verdict})", flush=True)
    return [
        f"### {model_name}", "",
        f"{steps} steps per run (the first left out), {pairs} headless/app pairs, order alternating; "
        f"load average {load_before:.1f} before, {load_after:.1f} after.",
        "",
        "| run | steps/s, median | steps/s per run | CPU s/step: process | CPU s/step: engine thread |",
        "|---|---|---|---|---|",
        f"| headless Trainer | {statistics.median(h):.3f} | {', '.join(f'{r:.3f}' for r in h)} | {cpu_h:.3f} "
        f"| {eng_h:.3f} |",
        f"| inside the app (80x24 dashboard) | {statistics.median(a):.3f} | "
        f"{', '.join(f'{r:.3f}' for r in a)} | {cpu_a:.3f} | {eng_a:.3f} |",
        "",
        f"App / headless, median of the per-pair ratios ({', '.join(f'{r:.3f}' for r in ratios)}): "
        f"**{ratio:.3f}** ({verdict}). CPU per step, medians: the engine thread {eng_h:.3f} s headless, "
        f"{eng_a:.3f} s in the app; the whole process {cpu_h:.3f} s vs {cpu_a:.3f} s. The app's UI thread "
        f"used {ui_a * 1000:.1f} ms of CPU per step, {100 * ui_a / wall_h:.1f}% of a headless step's wall "
        f"time ({wall_h:.3f} s): the most the UI can take from training, even if every UI cycle "
        "held the GIL or a core the engine needed.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small",
                        help="comma-separated: tiny, small, embedded or model paths (default tiny,small)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per run (default: tiny 30, small 8, embedded 4)")
    parser.add_argument("--pairs", type=int, default=4, help="headless/app pairs per model")
    parser.add_argument("--blas-threads", default=None,
                        help="OPENBLAS_NUM_THREADS for both runs (default: as in the environment)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()

    cfg = make_config(None, Path("."), 0)
    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    command = f"python bench/app_throughput.py --models {args.models} --pairs {args.pairs}" + (
        f" --steps {args.steps}" if args.steps else "") + (
        f" --blas-threads {args.blas_threads}" if args.blas_threads else "")
    lines = [
        SECTION, "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs shared "
        f"with other work, Python {platform.python_version()}, OPENBLAS_NUM_THREADS {blas_threads}). "
        f"Same config both ways: mode {cfg.mode}, batch "
        f"{cfg.batch_size} x {cfg.num_samples} samples, max_new_tokens {cfg.max_new_tokens}, ppo_epochs "
        f"{cfg.ppo_epochs}, rules judge, embedded prompts. Steps/s from the wall time between StepMetrics "
        "events; the app run is the real TrainerApp (headless Textual driver, 80x24, dashboard redrawn "
        "about once a second).",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="app-bench-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            lines += bench_model(name, Path(tmp), args.steps, args.pairs)
    write_section(Path(args.results), SECTION, "\n".join(lines))
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
