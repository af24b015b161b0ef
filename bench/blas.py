"""Benchmark: the BLAS that MLX's CPU backend runs on — f32 matmul and a PPO step, per library.

Each library runs in its own child process (loaded with RTLD_GLOBAL before mlx, as
``engine/blas.py`` does, but without the probe so that any library can be measured):

* ``bundled``: the reference BLAS inside the mlx[cpu] wheel;
* ``scipy-openblas32``: the default (DYNAMIC_ARCH), once with the kernels this machine's
  environment selects (``OPENBLAS_CORETYPE`` when set — e.g. Haswell = AVX2, what a CPU
  without AVX-512 gets) and once with that variable unset (the native pick);
* ``--old PATH``: a single-core OpenBLAS build for comparison, e.g. the ``cmeel-openblas``
  0.3.31 library used before (SKYLAKEX kernels: SIGILL on CPUs without AVX-512);
* ``--mkl PATH``: ``libmkl_rt.so`` from the ``mkl`` wheel (its folder goes on LD_LIBRARY_PATH).

The PPO step is ``bench/ppo_step.py``'s own side (embedded model, 8x2x64 tokens, 2 epochs)
with ``--ppo-steps`` steps, the first a warm-up; 0 skips it.

``--emulate CPU`` (needs ``qemu-x86_64``, Debian's qemu-user) also runs the probe of
``engine/blas.py`` for each OpenBLAS under user-mode emulation of that CPU (e.g. Haswell:
AVX2, no AVX-512), which is how a single-core build fails on such a machine.

Usage: python bench/blas.py [--old LIB] [--mkl LIB] [--ppo-steps 2] [--emulate Haswell] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402  bench/results.py

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## BLAS"
SHAPES = [(1024, 576, 49152), (1024, 576, 4096), (16, 576, 1536)]


def child(library: str, ppo_steps: int) -> dict:
    """Runs in the child: load ``library`` globally, then mlx; time matmuls (and PPO steps)."""
    import ctypes

    from tui_trainer.engine import blas

    if library != "bundled":
        target = library
        if "scipy_openblas" in Path(library).name:
            target, how = blas.build_shim(library, "scipy_")
            if target is None:
                raise SystemExit(how)
        blas._HANDLE = ctypes.CDLL(target, mode=ctypes.RTLD_GLOBAL)
    import mlx.core as mx

    out = {"blas": blas.blas_in_use(), "gflops": {}}
    for m, k, n in SHAPES:
        a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
        mx.eval(a, b)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - t0)
        out["gflops"][f"{m}x{k}@{k}x{n}"] = 2 * m * k * n / best / 1e9
    if ppo_steps:
        from ppo_step import run_ours  # bench/ppo_step.py

        res = run_ours(ppo_steps, int(os.environ.get("OPENBLAS_NUM_THREADS", "2")))
        out["ppo"] = [{k: s[k] for k in ("time_step", "time_rollout", "time_update")} for s in res["steps"]]
    return out


def run_child(library: str, ppo_steps: int, env_extra: dict[str, str], drop: tuple[str, ...] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    env.setdefault("OPENBLAS_NUM_THREADS", "2")
    proc = subprocess.run([sys.executable, __file__, "--child", library, "--ppo-steps", str(ppo_steps)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        why = f"died with signal {-proc.returncode}" if proc.returncode < 0 else \
            (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"error": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gfortran_dir() -> str | None:
    """A folder with libgfortran.so.5 -> the copy bundled with MLX (what cmeel's OpenBLAS needs)."""
    from tui_trainer.engine.blas import _mlx_libs_dir

    libs = _mlx_libs_dir()
    found = sorted(libs.glob("libgfortran*.so*")) if libs else []
    if not found:
        return None
    d = Path(tempfile.mkdtemp(prefix="blas-bench-"))
    (d / "libgfortran.so.5").symlink_to(found[0])
    return f"{d}:{libs}"


def emulated_probe(library: str, cpu: str, extra_env: dict[str, str]) -> str:
    """engine/blas.py's probe of ``library`` under qemu-x86_64 -cpu ``cpu``: its verdict in words."""
    import signal

    from tui_trainer.engine.blas import _PROBE

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    guest_env = [arg for k, v in extra_env.items() if v for arg in ("-E", f"{k}={v}")]
    cmd = ["qemu-x86_64", "-cpu", cpu, *guest_env, sys.executable, "-I", "-c", _PROBE, library, ""]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        return "no answer in 900 s"
    if proc.returncode < 0 or proc.returncode == 132:
        sig = -proc.returncode if proc.returncode < 0 else signal.SIGILL
        return f"died with {signal.Signals(sig).name}"
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ok = out.get("error_ratio", 9) <= 1
    return f"{'ok' if ok else 'WRONG'}: sgemm within float32 error, kernels {out.get('core', '?')}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--old", help="a single-core OpenBLAS build to compare (e.g. cmeel-openblas 0.3.31's)")
    p.add_argument("--mkl", help="libmkl_rt.so from the mkl wheel")
    p.add_argument("--ppo-steps", type=int, default=2, help="PPO steps per library, first a warm-up (0: none)")
    p.add_argument("--emulate", metavar="CPU", help="also probe each OpenBLAS under qemu-x86_64 -cpu CPU")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.ppo_steps)))
        return 0

    from tui_trainer.engine.blas import candidates, cpu_features

    scipy = next((lib for lib, src in candidates() if "scipy-openblas32" in src), None)
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    runs: list[tuple[str, str, dict, tuple]] = [("bundled reference BLAS (mlx[cpu] wheel)", "bundled", {}, ())]
    if scipy:
        label = f"scipy-openblas32, OPENBLAS_CORETYPE={coretype} (as set here)" if coretype else "scipy-openblas32"
        runs.append((label, scipy, {}, ()))
        if coretype:
            runs.append(("scipy-openblas32, native kernels (OPENBLAS_CORETYPE unset)", scipy, {},
                         ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")))
    if args.old:
        runs.append((f"old: {Path(args.old).name} (single-core build)", args.old,
                     {"LD_LIBRARY_PATH": gfortran_dir() or ""}, ()))
    if args.mkl:
        runs.append(("MKL (mkl wheel, GNU OpenMP threads)", args.mkl,
                     {"LD_LIBRARY_PATH": str(Path(args.mkl).parent), "MKL_THREADING_LAYER": "GNU",
                      "MKL_NUM_THREADS": "2"}, ()))
    load0 = os.getloadavg()
    results = []
    for label, lib, extra, drop in runs:
        steps = 0 if lib == "bundled" else args.ppo_steps  # the reference BLAS: matmuls only (a step is ~20x)
        print(f"... {label}", file=sys.stderr, flush=True)
        results.append((label, run_child(lib, steps, extra, drop)))
    emulated = []
    if args.emulate and shutil.which("qemu-x86_64"):
        for label, lib, extra, _ in runs:
            if lib not in ("bundled",) and "MKL" not in label:
                print(f"... {label} under qemu -cpu {args.emulate}", file=sys.stderr, flush=True)
                emulated.append((label, emulated_probe(lib, args.emulate, extra)))
    load1 = os.getloadavg()

    lines = [SECTION, "",
             f"`python bench/blas.py{' --old ' + Path(args.old).name if args.old else ''}"
             f"{' --mkl ' + Path(args.mkl).name if args.mkl else ''} --ppo-steps {args.ppo_steps}"
             f"{' --emulate ' + args.emulate if args.emulate else ''}` on "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_name()}, {os.cpu_count()} CPUs, "
             f"CPU features: {cpu_features()}; 2 BLAS threads; load average {load0[0]:.1f} before, {load1[0]:.1f} after.",
             "", "| BLAS | kernels in use | " + " | ".join(f"{m}x{k}@{k}x{n} GFLOP/s" for m, k, n in SHAPES)
             + " | PPO step s (rollout / update) |",
             "|---|---|" + "---:|" * (len(SHAPES) + 1)]
    for label, r in results:
        if "error" in r:
            lines.append(f"| {label} | {r['error']} |" + " |" * (len(SHAPES) + 1))
            continue
        ppo = r.get("ppo", [])[1:] or r.get("ppo", [])
        step = (f"{sum(s['time_step'] for s in ppo) / len(ppo):.1f} ({sum(s['time_rollout'] for s in ppo) / len(ppo):.1f}"
                f" / {sum(s['time_update'] for s in ppo) / len(ppo):.1f})") if ppo else "-"
        lines.append(f"| {label} | {r['blas']} | " + " | ".join(f"{g:.1f}" for g in r["gflops"].values())
                     + f" | {step} |")
    if emulated:
        lines += ["", f"The start-up probe (engine/blas.py) under `qemu-x86_64 -cpu {args.emulate}`, an emulated "
                      "CPU without AVX-512:", ""]
        lines += [f"- {label}: {verdict}" for label, verdict in emulated]
    lines += ["", f"Matmul: best of 3 after the inputs are evaluated. PPO step: bench/ppo_step.py's config on the "
              f"embedded model, {max(args.ppo_steps - 1, 1)} step(s) after a warm-up (one step moves by several "
              "seconds with the machine's load). The default is the scipy-openblas32 wheel (DYNAMIC_ARCH: one "
              "build for every x86-64 and aarch64 CPU, kernels picked at load time, 25 MB); the `mkl` wheel is "
              "685 MB installed and x86-64 only, and stays an opt-in through TUI_TRAINER_BLAS."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(Path(args.results), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
