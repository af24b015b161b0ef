"""Benchmark: seconds per PPO step (rollout / judge / update), peak memory, ours vs TRL.

One run does both sides on the embedded SmolLM2-135M-Instruct GGUF, one after the
other so they never share the CPU:

* ours: ``tui_trainer.engine.trainer.Trainer`` (MLX, f32, the optimized BLAS that
  the program picks itself) with the rules judge;
* TRL: ``trl.experimental.ppo.PPOTrainer`` (TRL 1.12.0, torch CPU), run by
  ``bench/trl_ppo_step.py`` in a separate virtual environment (TRL and torch never
  go into the main install), on the same prompt batches (token ids handed over).

Config (both sides): 8 prompts x 2 samples = 16 sequences x 64 new tokens per
step, EOS ignored so every response is 64 tokens, temperature 1, 2 PPO epochs,
minibatch 4 sequences (4 optimizer steps per epoch), LoRA rank 8 on every linear
layer of all 30 blocks (q, k, v, o, gate, up, down), alpha = 160 (mlx-lm scale 20),
value head on the policy's backbone, reference = adapter off, 2 threads. The
first step is a warm-up and left out of the averages.

The TRL environment (default ``.venv-bench`` at the repository root; or
``--trl-python`` / ``TUI_TRAINER_BENCH_PYTHON``)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0        # a CPU build of torch
    .venv-bench/bin/pip install 'trl==1.12.0' peft gguf

Without it, only our side is measured and reported.

Usage: python bench/ppo_step.py [--steps 4] [--threads 2] [--no-trl] [--results bench/RESULTS.md]
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

from memory import peak_rss_mb, reset_peak_rss  # bench/memory.py: the script's own folder
from results import write_section  # bench/results.py

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## PPO step"

CONFIG = {
    "batch_size": 8,
    "num_samples": 2,
    "max_new_tokens": 64,
    "ppo_epochs": 2,
    "minibatch_size": 4,
    "lora_rank": 8,
    "lora_scale": 20.0,
    "temperature": 1.0,
    "beta": 0.05,
    "epsilon": 0.2,
    "value_clip": 0.2,
    "vf_coef": 0.1,
    "gamma": 1.0,
    "lam": 0.95,
    "lr": 1e-5,
    "seed": 0,
}
RULES = {"target_length": 20, "length_tolerance": 5}  # a length rule, 20 words


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="PPO steps per side, the first one a warm-up (default 4)")
    p.add_argument("--threads", type=int, default=2, help="BLAS / torch threads on both sides (default 2)")
    p.add_argument("--trl-python", default=os.environ.get("TUI_TRAINER_BENCH_PYTHON",
                                                           str(ROOT / ".venv-bench" / "bin" / "python")),
                   help="python of the TRL environment (env TUI_TRAINER_BENCH_PYTHON)")
    p.add_argument("--no-trl", action="store_true", help="measure our side only")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"),
                   help="results file whose '## PPO step' section is replaced")
    p.add_argument("--no-write", action="store_true", help="print the table, leave the results file alone")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure both sides this many times, alternating, and report the ratio's spread (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the benchmark config on both sides (e.g. ppo_epochs=4, max_new_tokens=256); the "
                        "results go to their own section '## PPO step (KEY VALUE)'")
    args = p.parse_args(argv)
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in CONFIG or not value:
            p.error(f"--set {kv}: KEY=VALUE with KEY one of {', '.join(CONFIG)}")
        CONFIG[key] = type(CONFIG[key])(float(value)) if isinstance(CONFIG[key], (int, float)) else value
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is a warm-up)")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


# ----------------------------------------------------------------------------- memory



# ----------------------------------------------------------------------------- our side

def run_ours(steps: int, threads: int) -> dict:
    import mlx.core as mx

    from tui_trainer import events as ev
    from tui_trainer.config import AdapterConfig, Config, JudgeSpec
    from tui_trainer.engine import cpu_math
    from tui_trainer.engine.blas import blas_in_use
    from tui_trainer.engine.policy import adapter_off
    from tui_trainer.engine.trainer import Trainer
    from tui_trainer.run import build_run

    import gc

    # a repeat starts from what a fresh process holds: the arrays of the one before, freed, stay in
    # MLX's buffer cache and would count in this one's peak RSS
    gc.collect()
    mx.clear_cache()
    c = CONFIG
    run_dir = tempfile.mkdtemp(prefix="ppo-bench-ours-")
    cfg = Config(
        batch_size=c["batch_size"], num_samples=c["num_samples"], max_new_tokens=c["max_new_tokens"],
        ppo_epochs=c["ppo_epochs"], minibatch_size=c["minibatch_size"], temperature=c["temperature"],
        beta=c["beta"], epsilon=c["epsilon"], value_clip=c["value_clip"], vf_coef=c["vf_coef"],
        gamma=c["gamma"], lam=c["lam"], actor_lr=c["lr"], seed=c["seed"], steps=steps, save_every=0,
        adapter=AdapterConfig(type="lora", rank=c["lora_rank"], scale=c["lora_scale"], layers=-1),
        judges=[JudgeSpec(name="rules", options=dict(RULES))], run_dir=run_dir,
    )
    batches: list[list[list[int]]] = []
    out: dict = {}
    marks = {"cpu": 0.0}
    cpu_per_step: list[float] = []

    class BenchTrainer(Trainer):
        def setup(self):
            super().setup()
            # like TRL with stop_token=None: every response is max_new_tokens long
            self.eos_ids = set()
            draw = self.prompts.next_batch

            def recording_next_batch(n):
                batch = draw(n)
                batches.append([list(p.ids) for p in batch for _ in range(c["num_samples"])])
                return batch

            self.prompts.next_batch = recording_next_batch
            probe = self.prompts.prompts[0].ids
            with adapter_off(self.policy) as base:
                out["probe_logits"] = base(mx.array([probe]))[0, -1].astype(mx.float32).tolist()
            out["probe_ids"] = list(probe)
            out["trainable_params"] = sum(v.size for _, v in _flat(self.policy.trainable_parameters()))
            a = self.policy.model.args
            heads = a.num_attention_heads
            out["arch"] = {"d": a.hidden_size, "layers": a.num_hidden_layers, "ffn": a.intermediate_size,
                           "heads": heads, "kv_heads": a.num_key_value_heads or heads, "vocab": a.vocab_size,
                           "head_dim": getattr(a, "head_dim", None) or a.hidden_size // heads}
            out["peak_reset"] = reset_peak_rss()
            marks["cpu"] = time.process_time()

    metrics: list[dict] = []

    def observer(event):
        if isinstance(event, ev.StepMetrics):
            now = time.process_time()
            cpu_per_step.append(now - marks["cpu"])
            marks["cpu"] = now
            metrics.append(dict(event.values, peak_rss_mb=peak_rss_mb()))

    t0 = time.perf_counter()
    trainer = build_run(cfg, observer=observer, trainer_class=BenchTrainer)
    state = trainer.run()
    if state.status != "finished":
        raise SystemExit(f"our trainer ended {state.status}: {state.message}")
    steps_out = []
    for m, cpu in zip(metrics, cpu_per_step):
        steps_out.append({k: float(m[k]) for k in ("time_step", "time_rollout", "time_judge", "time_update",
                                                   "response_length", "peak_memory_mb", "peak_rss_mb",
                                                   "generation_tokens_per_second", "kl", "clip_fraction")}
                         | {"decode_threads": float(m.get("decode_threads", 1))}
                         | {"cpu_seconds": cpu})
    out.update(lanes=trainer.lanes.n, cpu_math="on" if cpu_math.enabled() else "off")
    out.update(steps=steps_out, batches=batches, wall_seconds=time.perf_counter() - t0, blas=blas_in_use(),
               peak_rss_mb_steps=peak_rss_mb() if out.get("peak_reset") else None,
               versions={"mlx": _version("mlx"), "mlx-lm": _version("mlx-lm")})
    return out


def _flat(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# ----------------------------------------------------------------------------- FLOPs and the BLAS peak

def token_flops(a: dict, context: float) -> float:
    """Matmul FLOPs of one token through the blocks (2 per multiply-add): the q/k/v/o and
    gate/up/down projections, plus attention scores and the weighted sum over ``context`` keys."""
    d, hd = a["d"], a["head_dim"]
    q, kv = a["heads"] * hd, a["kv_heads"] * hd
    linear = 2 * (d * q + 2 * d * kv + q * d + 3 * d * a["ffn"])
    attention = 4 * q * context
    return a["layers"] * (linear + attention)


def step_flops(a: dict, batch: list[list[int]], num_samples: int, new_tokens: int, epochs: int) -> dict:
    """FLOPs of the passes our step does on one batch (``batch``: the prompt ids of every row).

    rollout: each prompt prefilled once at the batch's padded width P, the head on its last
    position; then ``new_tokens`` decode steps of every row (blocks + head). update: one
    reference forward over the padded rows (P + R columns, head on the R response positions),
    then per epoch a forward and a backward; with frozen base weights the backward computes
    input gradients only, counted as one more forward (LoRA's own small products left out)."""
    head = 2 * a["d"] * a["vocab"]
    rows, P, R = len(batch), max(len(p) for p in batch), new_tokens
    prompts = rows // num_samples
    prefill = prompts * sum(token_flops(a, t + 1) for t in range(P)) + prompts * head
    decode = rows * sum(token_flops(a, P + t + 1) + head for t in range(R - 1))
    forward = rows * sum(token_flops(a, t + 1) for t in range(P + R)) + rows * R * head
    return {"rollout": prefill + decode, "update": forward * (1 + 2 * epochs)}


def matmul_peak(threads: int, shape: tuple[int, int, int] = (1024, 576, 1536), reps: int = 5) -> float:
    """Best f32 GFLOP/s of MLX's (m, k) @ (k, n) matmul with ``threads`` BLAS threads."""
    import mlx.core as mx

    from tui_trainer.engine.blas import blas_threads

    m, k, n = shape
    x, w = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(x, w)
    best = float("inf")
    with blas_threads(threads):
        mx.eval(x @ w)
        for _ in range(reps):
            t0 = time.perf_counter()
            mx.eval(x @ w)
            best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


# ----------------------------------------------------------------------------- TRL side

def run_trl(python: str, ours: dict, threads: int) -> tuple[dict | None, str]:
    """Run bench/trl_ppo_step.py in the TRL environment; (result or None, note)."""
    if not Path(python).exists():
        return None, (f"TRL environment not found ({python}); create it with:\n"
                      "    python3 -m venv .venv-bench\n"
                      "    .venv-bench/bin/pip install torch==2.13.0        # a CPU build of torch\n"
                      "    .venv-bench/bin/pip install 'trl==1.12.0' peft gguf\n"
                      "or point --trl-python / TUI_TRAINER_BENCH_PYTHON at one")
    from tui_trainer.engine.models import default_model_path

    c = CONFIG
    work = Path(tempfile.mkdtemp(prefix="ppo-bench-trl-"))
    spec = {
        "gguf": str(default_model_path()),
        "probe_ids": ours["probe_ids"],
        "batches": ours["batches"],
        "config": {"threads": threads, "seed": c["seed"], "minibatch_size": c["minibatch_size"],
                   "ppo_epochs": c["ppo_epochs"], "max_new_tokens": c["max_new_tokens"],
                   "temperature": c["temperature"], "beta": c["beta"], "epsilon": c["epsilon"],
                   "value_clip": c["value_clip"], "vf_coef": c["vf_coef"], "gamma": c["gamma"], "lam": c["lam"],
                   "lr": c["lr"], "lora_rank": c["lora_rank"], "lora_alpha": int(c["lora_rank"] * c["lora_scale"])},
    }
    (work / "in.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    for var in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH"):  # ours, not torch's
        env.pop(var, None)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    log = work / "trl.log"
    with open(log, "w") as f:
        proc = subprocess.run([python, str(ROOT / "bench" / "trl_ppo_step.py"), str(work / "in.json"),
                               str(work / "out.json")], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not (work / "out.json").exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return None, f"TRL side failed (exit {proc.returncode}); last lines of {log}:\n{tail}"
    return json.loads((work / "out.json").read_text()), ""


# ----------------------------------------------------------------------------- report

KEYS = ("time_step", "time_rollout", "time_judge", "time_update", "cpu_seconds")


def summary(result: dict) -> dict:
    measured = result["steps"][1:]  # the first step is a warm-up
    avg = {k: sum(s[k] for s in measured) / len(measured) for k in KEYS if all(k in s for s in measured)}
    avg["response_length"] = sum(s["response_length"] for s in result["steps"]) / len(result["steps"])
    avg["rollout_update"] = avg["time_rollout"] + avg["time_update"]
    avg["peak_rss_mb"] = result.get("peak_rss_mb_steps") or max(s.get("peak_rss_mb", 0) for s in result["steps"])
    avg["tokens_per_second"] = (CONFIG["batch_size"] * CONFIG["num_samples"] * avg["response_length"]
                                / avg["time_step"])
    avg["measured_steps"] = len(measured)
    return avg


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def probe_check(ours: dict, trl: dict) -> str:
    a, b = ours["probe_logits"], trl["probe_logits"]
    diff = max(abs(x - y) for x, y in zip(a, b))
    top_a, top_b = max(range(len(a)), key=a.__getitem__), max(range(len(b)), key=b.__getitem__)
    same = "same" if top_a == top_b else f"different ({top_a} vs {top_b})"
    return (f"same weights check: last-position logits of a {len(ours['probe_ids'])}-token prompt, "
            f"base model, MLX vs transformers: top-1 token {same}, max |diff| {diff:.2e}")


def table(o: dict, t: dict | None) -> list[str]:
    rows = [
        ("seconds / step", "time_step", "{:.1f}"),
        ("  rollout (generation)", "time_rollout", "{:.1f}"),
        ("  judge (ours: rules; TRL: reward-model forward)", "time_judge", "{:.2f}"),
        ("  update (ref + GAE + PPO epochs; TRL: + values)", "time_update", "{:.1f}"),
        ("rollout + update (no judge)", "rollout_update", "{:.1f}"),
        ("CPU seconds / step (process)", "cpu_seconds", "{:.1f}"),
        ("generated tokens / s (whole step)", "tokens_per_second", "{:.1f}"),
        ("mean response length (tokens)", "response_length", "{:.1f}"),
        ("peak RSS during the steps (MB)", "peak_rss_mb", "{:.0f}"),
    ]
    lines = ["| | ours (MLX) | TRL (torch) | TRL / ours |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        ov = o.get(key)
        tv = t.get(key) if t else None
        ratio = ""
        if ov and tv is not None and key not in ("response_length", "time_judge"):
            r = tv / ov
            ratio = f"{r:.2f}x" if key != "tokens_per_second" else f"{r:.2f}x (higher is faster)"
        lines.append(f"| {label} | {fmt.format(ov) if ov is not None else '-'} | "
                     f"{fmt.format(tv) if tv is not None else '-'} | {ratio} |")
    return lines


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def mean_summary(results: list[dict]) -> dict:
    """The mean over repeats of each figure of ``summary``."""
    parts = [summary(r) for r in results]
    return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}


def render(args, runs: list[tuple[dict, dict | None]], note: str, load_before: str, load_after: str,
           peaks: dict[int, float]) -> str:
    from tui_trainer.engine.blas import cpu_features

    ours = runs[0][0]
    trl = runs[0][1]
    o = mean_summary([r for r, _ in runs])
    trls = [t for _, t in runs if t]
    t = mean_summary(trls) if len(trls) == len(runs) else None
    c = CONFIG
    rows = c["batch_size"] * c["num_samples"]
    repeats = f", measured {len(runs)} times (alternating sides; figures are means)" if len(runs) > 1 else ""
    lines = [
        section_name(args),
        "",
        f"Measured {dt.date.today().isoformat()} by `bench/ppo_step.py"
        + "".join(f" --set {kv}" for kv in args.set) + f"` on {cpu_model()} (vector features: {cpu_features()}), "
        f"{os.cpu_count()} cores, {args.threads} threads per side, one side after the other{repeats}. "
        f"Load average (1/5/15 min) before / after: {load_before} / {load_after} (the machine is shared; "
        "times move with what else runs).",
        "",
        f"Config: embedded SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32 on both sides); "
        f"{c['batch_size']} prompts x {c['num_samples']} samples = {rows} sequences x {c['max_new_tokens']} new "
        f"tokens (EOS ignored on both sides), temperature {c['temperature']:g}; {c['ppo_epochs']} PPO epochs x "
        f"{rows // c['minibatch_size']} minibatches of {c['minibatch_size']} sequences; LoRA rank "
        f"{c['lora_rank']}, alpha {int(c['lora_rank'] * c['lora_scale'])}, on all 7 linear layers of all 30 blocks; "
        f"reference = adapter off; {args.steps} steps per side, the first a warm-up, averages over the other "
        f"{int(o['measured_steps'])}.",
        "",
        *table(o, t),
        "",
    ]
    lines += hardware_lines(runs, peaks, o) + [""]
    if t:
        ratios = sorted(tt["time_step"] / oo["time_step"] for oo, tt in
                        ((summary(a), summary(b)) for a, b in runs))
        spread = (f" (each repeat: {', '.join(f'{r:.2f}x' for r in ratios)}; median "
                  f"{ratios[len(ratios) // 2]:.2f}x)") if len(ratios) > 1 else ""
        lines += [
            f"**Ratio (TRL seconds / ours) per PPO step: {t['time_step'] / o['time_step']:.2f}x**{spread}; "
            f"rollout + update only (judges left out): {t['rollout_update'] / o['rollout_update']:.2f}x.",
            "",
            f"- Ours: tui-trainer Trainer, mlx {ours['versions']['mlx']}, mlx-lm {ours['versions']['mlx-lm']}, "
            f"BLAS: {ours['blas']}; {ours['trainable_params'] / 1e6:.2f}M trainable parameters (LoRA + value head); "
            f"judge: `rules` (length target {RULES['target_length']} words).",
            f"- TRL: `trl.experimental.ppo.PPOTrainer` from TRL {trl['versions']['trl']} (the last release that "
            f"ships PPO; 1.13 removed it), torch {trl['versions']['torch']} (CPU), transformers "
            f"{trl['versions']['transformers']}, peft {trl['versions']['peft']}; "
            f"{trl['trainable_params'] / 1e6:.2f}M trainable parameters (LoRA + value head), float32, "
            "no gradient checkpointing.",
            f"- {probe_check(ours, trl)}.",
            "- Every step, warm-up first (seconds, rollout / judge / update): ours "
            + ", ".join(_step_str(s) for s in ours["steps"]) + "; TRL "
            + ", ".join(_step_str(s) for s in trl["steps"]) + ".",
            "- What differs: TRL's PPO takes a reward *model*, not a function, so its judge is a linear "
            "head on the policy's own backbone (one extra forward pass over prompt + response), where ours "
            "is the rules judge on the text; the 'rollout + update' ratio leaves judges out. TRL's value "
            "model is a head on the same shared backbone, but TRL runs it as its own forward pass (in the "
            "rollout and in every minibatch); ours keeps the values of the rollout's own hidden states "
            "(the decode computes them anyway) and reads the update's values off the policy forward. TRL uses one AdamW for policy and value (lr 1e-5); ours two Adams (actor 1e-5, "
            "critic 1e-4) and gradient clipping. TRL's pad token is set to `<|endoftext|>` because it "
            "finds padding by token id. Both sides see the same prompt batches in the same order.",
            "- Split: 'rollout' is generation (TRL: `batch_generation`; ours: batched KV-cached sampling "
            "+ decoding, values included); 'judge' is the reward call; 'update' is the rest of the step: "
            "reference log-probs (adapter off), TRL's value forward, rewards, GAE and the PPO epochs. Peak RSS is the kernel's "
            "high-water mark reset after model loading, so loading is not counted.",
        ]
    else:
        lines += [f"TRL side not measured: {note.splitlines()[0]}", ""]
    return "\n".join(lines).rstrip() + "\n"


def hardware_lines(runs, peaks: dict[int, float], o: dict) -> list[str]:
    """Achieved GFLOP/s of our rollout and update (the FLOPs of the passes done, step_flops)
    next to the f32 matmul peak of the BLAS in use."""
    c = CONFIG
    ours = runs[0][0]
    per_batch = [step_flops(ours["arch"], b, c["num_samples"], c["max_new_tokens"], c["ppo_epochs"])
                 for b in ours["batches"][1:len(ours["steps"])]]
    flops = {k: sum(f[k] for f in per_batch) / len(per_batch) for k in ("rollout", "update")}
    peak = ", ".join(f"{v:.0f} GFLOP/s with {n} thread{'s' if n > 1 else ''}" for n, v in sorted(peaks.items()))
    return [
        f"Distance to the hardware: f32 matmul peak of the BLAS in use (1024x576 @ 576x1536): {peak}. "
        f"Ours per step: rollout {flops['rollout'] / 1e9:.0f} GFLOP in {o['time_rollout']:.1f} s = "
        f"{flops['rollout'] / 1e9 / o['time_rollout']:.1f} GFLOP/s (decode threads chosen each step: "
        f"{', '.join(str(int(s['decode_threads'])) for s in ours['steps'])}); update {flops['update'] / 1e9:.0f} GFLOP "
        + (f"on {ours['lanes']} lanes of 1 BLAS thread each" if ours.get("lanes", 1) > 1 else "on one stream")
        + f" (exp through exp2: {ours.get('cpu_math', 'on')}) "
        f"in {o['time_update']:.1f} s = {flops['update'] / 1e9 / o['time_update']:.1f} GFLOP/s "
        f"({c['ppo_epochs']} epochs; FLOPs counted as in `step_flops`: matmuls of the passes done, the "
        "backward of the frozen base as one more forward).",
    ]


def _step_str(s: dict) -> str:
    return f"{s['time_step']:.0f} ({s['time_rollout']:.0f} / {s['time_judge']:.1f} / {s['time_update']:.0f})"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    from tui_trainer.engine.blas import ensure_fast_blas

    ensure_fast_blas()  # loads the probed OpenBLAS before mlx, like the CLI
    load_before = load_average()
    runs: list[tuple[dict, dict | None]] = []
    note = "skipped (--no-trl)" if args.no_trl else ""
    for i in range(args.repeat):
        tag = f" (repeat {i + 1}/{args.repeat})" if args.repeat > 1 else ""
        print(f"ours: {args.steps} PPO steps{tag} ...", flush=True)
        ours = run_ours(args.steps, args.threads)
        trl = None
        if not args.no_trl:
            print(f"TRL: the same steps in the TRL environment{tag} ...", flush=True)
            trl, note = run_trl(args.trl_python, ours, args.threads)
            if trl is None:
                print(note, file=sys.stderr)
        runs.append((ours, trl))
    peaks = {n: matmul_peak(n) for n in sorted({1, args.threads})}
    section = render(args, runs, note, load_before, load_average(), peaks)
    raw = ROOT / "bench" / "out"
    raw.mkdir(parents=True, exist_ok=True)
    name = "ppo_step" + "".join(f"-{kv.replace('=', '')}" for kv in args.set) + ".json"
    (raw / name).write_text(json.dumps({"runs": [{"ours": o, "trl": t} for o, t in runs], "peaks": peaks}))
    print()
    print(section)
    if not args.no_write:
        write_section(Path(args.results), section_name(args), section)
        print(f"wrote the '{section_name(args)}' section of {args.results}")
    return 0


def section_name(args) -> str:
    return SECTION + (f" ({', '.join(kv.replace('=', ' ') for kv in args.set)})" if args.set else "")


if __name__ == "__main__":
    sys.exit(main())
