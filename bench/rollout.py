"""Rollout speed on the embedded SmolLM2-135M, and f32 matmul speed with the BLAS in use vs the wheel's own.

    python bench/rollout.py                    # everything, writes the "## Rollout" section of bench/RESULTS.md
    python bench/rollout.py --new-tokens 64 --repeats 3    # longer, steadier (on an idle machine)

In one process, on the same GGUF:
- our batched, KV-cached rollout (``tui_trainer.engine.rollout.sample``) at
  num_samples 1, 8 and 32 for one chat prompt;
- plain ``mlx_lm.stream_generate`` at batch 1 on the same model object;
  both with OpenBLAS's own thread count (2 here) and again with 1 thread (set at run
  time): on a busy 2-core machine two BLAS threads wait on each other;
- llama.cpp (llama-cpp-python) at batch 1 on the GGUF file itself, n_threads=2.
Every run samples at temperature 0.8 and generates exactly ``--new-tokens``
tokens (EOS is ignored so that the runs do equal work); tokens/s counts generated
tokens over the wall time including the prompt's prefill. Each number is the best
of ``--repeats`` runs after a 4-token warm-up (the machine may be shared).

Matmul: f32 (1024x576) @ (576x4096) and the LM-head shape (1024x576) @ (576x49152),
GFLOP/s = 2*M*K*N / seconds, in this process (BLAS loaded by ``ensure_fast_blas``)
and in a child process started with TUI_TRAINER_BLAS=off, i.e. the reference BLAS
bundled with the mlx[cpu] wheel.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from results import write_section  # noqa: E402  bench/results.py

from tui_trainer.engine.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()

import mlx.core as mx  # noqa: E402

SECTION = "## Rollout"
BUSY_NOTE = ("The machine was busy with other work during this run (load average at or above its CPU count): "
             "absolute numbers are low and noisy, compare rows of one run only. Two OpenBLAS threads on busy "
             "cores wait on each other at every small decode matmul, which is why 1 BLAS thread is several "
             "times faster here.")
SHAPES = [(1024, 576, 4096), (1024, 576, 49152)]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TEMPERATURE = 0.8


# --------------------------------------------------------------------------- matmul


def matmul_gflops(max_seconds: float) -> dict[str, float]:
    """GFLOP/s of f32 a @ b for each shape: best of as many runs as fit in ``max_seconds`` (at least one)."""
    out = {}
    for m, k, n in SHAPES:
        a = mx.random.normal((m, k), dtype=mx.float32)
        b = mx.random.normal((k, n), dtype=mx.float32)
        warm = mx.random.normal((64, k), dtype=mx.float32)
        mx.eval(a, b, warm @ b)  # warm-up on a thin slice: the reference BLAS takes ~20 s for the full LM head
        best, spent = float("inf"), 0.0
        while spent < max_seconds or best == float("inf"):
            t0 = time.perf_counter()
            mx.eval(a @ b)
            dt = time.perf_counter() - t0
            best, spent = min(best, dt), spent + dt
            if dt > max_seconds:
                break
        out[f"{m}x{k}@{k}x{n}"] = 2 * m * k * n / best / 1e9
    return out


def reference_gflops(max_seconds: float) -> tuple[dict[str, float] | None, str]:
    """The same matmuls in a child process on the wheel's bundled reference BLAS."""
    env = dict(os.environ)
    env["TUI_TRAINER_BLAS"] = "off"
    proc = subprocess.run([sys.executable, __file__, "--matmul-child", str(max_seconds)],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return data["gflops"], data["blas"]


# --------------------------------------------------------------------------- rollout


def blas_threads() -> int | None:
    """OpenBLAS's thread count in this process, None when OpenBLAS is not the BLAS in use."""
    try:
        return int(ctypes.CDLL(None).openblas_get_num_threads())
    except (AttributeError, OSError):
        return None


def set_blas_threads(n: int) -> None:
    ctypes.CDLL(None).openblas_set_num_threads(n)


def best_of(fn, new_tokens: int, repeats: int) -> float:
    """Tokens/s: 1 / the best seconds-per-token of ``repeats`` runs of ``fn(new_tokens)``, after a short warm-up."""
    fn(min(4, new_tokens))
    return 1.0 / min(fn(new_tokens) for _ in range(repeats))


def bench_ours(model, prompt_ids, eos_free_pad: int, batch: int, new_tokens: int, repeats: int) -> float:
    from tui_trainer.engine.rollout import sample

    def once(new_tokens: int) -> float:
        t0 = time.perf_counter()
        r = sample(model, [prompt_ids], num_samples=batch, max_new_tokens=new_tokens,
                   temperature=TEMPERATURE, eos_ids=(), pad_id=eos_free_pad, seed=0)
        dt = time.perf_counter() - t0
        assert r.num_tokens == batch * new_tokens, r.lengths
        return dt / r.num_tokens

    return best_of(once, new_tokens, repeats)


def bench_mlx_lm(model, tokenizer, prompt_ids, new_tokens: int, repeats: int) -> float:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    saved = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()  # generate exactly new_tokens, as the other runs do

    def once(new_tokens: int) -> float:
        t0 = time.perf_counter()
        n = 0
        for n, _ in enumerate(stream_generate(model, tokenizer, mx.array(prompt_ids), max_tokens=new_tokens,
                                              sampler=make_sampler(temp=TEMPERATURE)), 1):
            pass
        dt = time.perf_counter() - t0
        assert n == new_tokens, n
        return dt / n

    try:
        return best_of(once, new_tokens, repeats)
    finally:
        tokenizer.eos_token_ids = saved


def bench_llama_cpp(path: Path, prompt_ids, new_tokens: int, repeats: int) -> float:
    import llama_cpp

    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)  # llama.cpp logs from C to fd 2
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=len(prompt_ids) + new_tokens + 16, n_threads=2, n_batch=512,
                              verbose=False, seed=0)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)

    def once(new_tokens: int) -> float:
        t0 = time.perf_counter()
        n = 0
        for n, _ in enumerate(llm.generate(prompt_ids, temp=TEMPERATURE, reset=True), 1):
            if n == new_tokens:
                break
        return (time.perf_counter() - t0) / n

    return best_of(once, new_tokens, repeats)


# --------------------------------------------------------------------------- report


def cpu_model() -> tuple[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or platform.machine(), str(os.cpu_count())
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = info.get("Model name", platform.machine()).strip()
    return name, info.get("CPU(s)", str(os.cpu_count())).strip()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def render(args, rows, mm, ref, ref_blas, blas, model_path, prompt_len, load_before, load_after, wall) -> str:
    cpu, cores = cpu_model()
    lines = [
        SECTION,
        "",
        f"`python bench/rollout.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{cpu}, {cores} CPUs; load average {load_before} before, {load_after} after; total {wall:.0f} s.",
        f"mlx {mx.__version__}, mlx-lm {_version('mlx-lm')}, llama-cpp-python {_version('llama_cpp_python')}; "
        f"BLAS in use: {blas}.",
        f"Model: `{model_path.name}` (embedded), MLX side dequantized to f32 (the CPU default). One chat prompt "
        f"of {prompt_len} tokens, {args.new_tokens} new tokens per sequence at T={TEMPERATURE} (EOS ignored), "
        f"best of {args.repeats} after a 4-token warm-up; tokens/s = generated tokens / wall time incl. prefill.",
        "",
        "| rollout | batch | tokens/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {batch} | {tps:.1f} |" for name, batch, tps in rows]
    lines += [
        "",
        "| f32 matmul | BLAS in use (GFLOP/s) | wheel's reference BLAS (GFLOP/s) | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for shape, g in mm.items():
        r = ref.get(shape) if ref else None
        lines.append(f"| {shape} | {g:.1f} | {r:.2f} | {g / r:.0f}x |" if r else f"| {shape} | {g:.1f} | n/a | |")
    lines.append("")
    lines.append(f"Reference run: {ref_blas}.")
    if float(load_before.split()[0]) >= float(cores):
        lines += ["", BUSY_NOTE]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--matmul-seconds", type=float, default=3.0, help="time budget per matmul shape")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--matmul-child", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from tui_trainer.engine.blas import blas_in_use

    if args.matmul_child is not None:
        print(json.dumps({"gflops": matmul_gflops(args.matmul_child), "blas": blas_in_use()}))
        return 0

    from tui_trainer.engine.models import default_model_path, load_policy

    t_start = time.perf_counter()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    blas = blas_in_use()
    path = default_model_path()
    model, tok = load_policy(str(path))
    prompt_ids = list(tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True))
    pad = tok.pad_token_id or 0

    rows = []
    default_threads = blas_threads()
    for threads in dict.fromkeys([default_threads, 1]):  # the process's own count, then 1 thread
        if threads is not None:
            set_blas_threads(threads)
        label = f"BLAS threads {threads}" if threads is not None else "BLAS"
        for b in (int(x) for x in args.batches.split(",")):
            rows.append((f"ours: batched KV-cached `sample`, {label}", b,
                         bench_ours(model, prompt_ids, pad, b, args.new_tokens, args.repeats)))
            print(f"{rows[-1][0]}, batch {b}: {rows[-1][2]:.1f} tok/s", flush=True)
        rows.append((f"mlx_lm.stream_generate, {label}", 1,
                     bench_mlx_lm(model, tok, prompt_ids, args.new_tokens, args.repeats)))
        print(f"{rows[-1][0]}, batch 1: {rows[-1][2]:.1f} tok/s", flush=True)
        if threads is None:
            break
    if default_threads is not None:
        set_blas_threads(default_threads)
    rows.append(("llama.cpp on the GGUF (n_threads=2)", 1,
                 bench_llama_cpp(path, prompt_ids, args.new_tokens, args.repeats)))
    print(f"llama.cpp batch 1: {rows[-1][2]:.1f} tok/s", flush=True)
    del model

    mm = matmul_gflops(args.matmul_seconds)
    print(f"matmul ({blas}): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in mm.items()), flush=True)
    ref, ref_blas = reference_gflops(args.matmul_seconds)
    print(f"matmul ({ref_blas}): " + (", ".join(f"{k} {v:.2f} GFLOP/s" for k, v in ref.items()) if ref else "failed"),
          flush=True)
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    text = render(args, rows, mm, ref, ref_blas, blas, path, len(prompt_ids), load_before, load_after,
                  time.perf_counter() - t_start)
    print()
    print(text)
    if not args.no_write:
        write_section(Path(args.results), SECTION, text)
        print(f"\nwrote the {SECTION!r} section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
