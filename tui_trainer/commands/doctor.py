"""`tui-trainer doctor`: platform, Python, MLX and its device, CPU features, BLAS in use and its probe, default model, llama.cpp, plugins.

Exit status 0 when the essentials (MLX, the default model, llama-cpp-python) are
there; 1 when one is missing. A slow BLAS is reported with its fix, not an error.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _line(label: str, value: str) -> None:
    print(f"{label + ':':<16}{value}")


def _mlx() -> tuple[bool, str]:
    try:
        import mlx.core as mx
    except Exception as exc:  # a broken or missing wheel: say which
        return False, f"cannot import mlx ({type(exc).__name__}: {exc}); install mlx[cpu] (Linux) or mlx (macOS)"
    backends = []
    for name in ("metal", "cuda"):
        mod = getattr(mx, name, None)
        try:
            if mod is not None and mod.is_available():
                backends.append(name)
        except Exception:
            pass
    lm = _version("mlx-lm")
    extra = f", GPU backends: {', '.join(backends)}" if backends else ", no GPU backend (CPU)"
    return True, f"{mx.__version__}, default device {mx.default_device()}{extra}; mlx-lm {lm or 'missing'}"


def _blas() -> list[tuple[str, str]]:
    """Lines for the CPU's vector features, the BLAS in use, each probe's result and a fix."""
    from tui_trainer.engine.blas import STATUS, blas_in_use, cpu_features, is_fast, wants_cpu_blas

    rows = [("CPU features", cpu_features()), ("BLAS", blas_in_use())]
    for p in STATUS.probes:
        rows.append(("BLAS probe", f"{p.library}: {p.line}" if p.ok else p.line))
    rows.append(("decode threads", _decode_threads()))
    rows.append(("update lanes", _lanes()))
    if not is_fast(rows[1][1]) and wants_cpu_blas():
        if os.environ.get("TUI_TRAINER_BLAS", "").lower() in ("0", "off", "none", "reference"):
            rows.append(("BLAS fix", "unset TUI_TRAINER_BLAS (it is set to off) so that tui-trainer loads "
                                     "an optimized BLAS"))
        else:
            rows.append(("BLAS fix", "pip install scipy-openblas32 (and a C compiler for its shim), or point "
                                     "TUI_TRAINER_BLAS at a DYNAMIC_ARCH OpenBLAS or MKL library"))
    return rows


def _lanes() -> str:
    """How the update spreads over the cores (engine/lanes.py) and which exp it uses (engine/cpu_math.py)."""
    from tui_trainer.engine import cpu_math
    from tui_trainer.engine.lanes import lane_count

    n = lane_count()
    how = (f"{n} (a minibatch's rows over {n} CPU streams, 1 BLAS thread each)" if n > 1 else
           "1 (one stream)")
    if os.environ.get("TUI_TRAINER_LANES"):
        how += ", fixed by TUI_TRAINER_LANES"
    return how + ("; exp through exp2 (TUI_TRAINER_CPU_MATH=off: MLX's own)" if cpu_math.enabled() else
                  "; MLX's own exp")


def _decode_threads() -> str:
    """How the rollout picks its BLAS threads (engine/blas.py DecodeThreads)."""
    from tui_trainer.engine.blas import DecodeThreads, decode_threads

    fixed = decode_threads()
    plan = DecodeThreads(fixed, max_tokens=64)
    if fixed is not None:
        return f"{fixed} (fixed by TUI_TRAINER_DECODE_THREADS)"
    if plan.candidates:
        return (f"timed at each rollout: 1 or {plan.before} BLAS threads, the faster for its first tokens "
                "(metrics: decode_threads; TUI_TRAINER_DECODE_THREADS fixes it)")
    return "1 (one BLAS thread available, nothing to choose)"


def _model() -> tuple[bool, str]:
    from tui_trainer.errors import TrainerError
    from tui_trainer.embedded import default_model_path

    try:
        path = default_model_path()
    except TrainerError as exc:
        return False, str(exc)
    size = path.stat().st_size / 2**20
    try:
        from collections import Counter

        from tui_trainer.engine.gguf import tensor_types

        names = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
        counts = Counter(names.get(t, f"type{t}") for t in tensor_types(path).values())
        kinds = ", ".join(f"{k} x{n}" for k, n in counts.most_common())
    except TrainerError as exc:
        return False, f"{path} ({size:.0f} MiB): {exc}"
    return True, f"{path} ({size:.0f} MiB; tensors {kinds})"


def _llama_cpp() -> tuple[bool, str]:
    version = _version("llama_cpp_python") or _version("llama-cpp-python")
    if version is None:
        return False, "llama-cpp-python is not installed (pip install llama-cpp-python): the llama judge needs it"
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
        # "CPU : SSE3 = 1 | AVX = 1 | ..." (one "<backend> :" prefix per backend)
        features = [part.split("=")[0].split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")]
        detail = f"; ggml CPU features: {' '.join(features)}" if features else ""
    except Exception as exc:  # the shared library failed to load
        return False, f"llama-cpp-python {version} is installed but does not load ({type(exc).__name__}: {exc})"
    return True, f"llama-cpp-python {version}{detail}"


def _plugins() -> list[str]:
    try:
        from tui_trainer.plugins.manager import get_plugin_manager
    except ImportError:
        return ["(plugin manager not installed)"]
    try:
        reg = get_plugin_manager()
    except Exception as exc:
        return [f"cannot load plugins ({type(exc).__name__}: {exc})"]
    rows = []
    for rec in reg.plugins:
        status = "ok" if rec.status == "ok" else f"{rec.status}: {rec.error}" if rec.error else rec.status
        rows.append(f"{rec.name} {rec.version or '-'} [{', '.join(rec.judges) or 'no judges'}] {status}")
    return rows or ["(none)"]


def run(args: argparse.Namespace) -> int:
    ok = True
    _line("tui-trainer", _version("tui-trainer") or "(not installed as a distribution)")
    _line("platform", f"{platform.platform()} ({platform.machine()})")
    _line("python", f"{platform.python_version()} at {sys.executable}")
    mlx_ok, mlx_desc = _mlx()
    ok &= mlx_ok
    _line("mlx", mlx_desc)
    if mlx_ok:
        for label, value in _blas():
            _line(label, value)
    model_ok, model_desc = _model()
    ok &= model_ok
    _line("default model", model_desc)
    llama_ok, llama_desc = _llama_cpp()
    ok &= llama_ok
    _line("llama.cpp", llama_desc)
    for i, row in enumerate(_plugins()):
        _line("judge plugins" if i == 0 else "", row)
    return 0 if ok else 1
