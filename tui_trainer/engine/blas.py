"""Pick a fast BLAS for MLX's CPU backend on Linux.

The ``mlx[cpu]`` wheel links a bundled reference BLAS (netlib): f32 matmul runs
~30-40x slower than OpenBLAS. libmlx resolves ``cblas_sgemm`` and the LAPACK
routines dynamically, so a library named in ``LD_PRELOAD`` wins the symbol
lookup. ``ensure_fast_blas()`` re-executes the current process once with
``LD_PRELOAD`` set to the OpenBLAS shipped by the ``cmeel-openblas`` wheel (a
dependency on Linux x86_64), or to an MKL/OpenBLAS named by the user in
``TUI_TRAINER_BLAS``. It must run before ``mlx`` is imported, which is why this
module imports nothing heavy.

That OpenBLAS needs ``libgfortran.so.5``; the MLX wheel bundles one under a
mangled name, so a cache folder holds a symlink with the plain name.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

_GUARD = "TUI_TRAINER_BLAS_REEXEC"


@dataclass
class BlasChoice:
    library: str | None  # path to the optimized library, None when none found
    reason: str  # one line: what was found, or why not / the fix


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return [Path(d) for d in dirs if Path(d).is_dir()]


def _mlx_libs_dir() -> Path | None:
    for site in _site_dirs():
        for name in ("mlx_cpu.libs", "mlx.libs"):
            if (site / name).is_dir():
                return site / name
    return None


def find_openblas() -> BlasChoice:
    """Locate an optimized BLAS to preload; never imports mlx."""
    user = os.environ.get("TUI_TRAINER_BLAS")
    if user:
        if user.lower() in ("0", "off", "none", "reference"):
            return BlasChoice(None, "disabled by TUI_TRAINER_BLAS")
        if Path(user).is_file():
            return BlasChoice(user, f"from TUI_TRAINER_BLAS={user}")
        return BlasChoice(None, f"TUI_TRAINER_BLAS={user} is not a file")
    for site in _site_dirs():
        for cand in sorted(glob.glob(str(site / "cmeel.prefix" / "lib" / "libopenblas*.so*"))):
            return BlasChoice(cand, "OpenBLAS from the cmeel-openblas wheel")
    for cand in ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
                 "/usr/lib64/libopenblas.so.0", "/usr/lib/libopenblas.so.0"):
        if Path(cand).is_file():
            return BlasChoice(cand, "system OpenBLAS")
    return BlasChoice(None, "no optimized BLAS found: `pip install cmeel-openblas` (or apt install libopenblas0), "
                            "or point TUI_TRAINER_BLAS at an OpenBLAS/MKL library")


def _gfortran_shim(libs: Path) -> Path | None:
    """A cache folder with ``libgfortran.so.5`` -> MLX's bundled copy."""
    found = sorted(libs.glob("libgfortran*.so*"))
    if not found:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tui-trainer" / "blas-shim"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        link = cache / "libgfortran.so.5"
        if not link.exists() or link.resolve() != found[0].resolve():
            tmp = cache / f".libgfortran.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(found[0])
            os.replace(tmp, link)
        return cache
    except OSError:
        return None


def wants_cpu_blas() -> bool:
    """True on Linux unless a GPU backend is in use or the user opted out."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("TUI_TRAINER_DEVICE", "").lower() == "gpu":
        return False
    # the mlx[cuda] wheel has no bundled reference BLAS worth replacing for GPU work
    return _mlx_libs_dir() is not None and (_mlx_libs_dir().name == "mlx_cpu.libs")


def preload_env(choice: BlasChoice) -> dict[str, str] | None:
    """The environment that makes MLX use ``choice.library``; None if impossible."""
    if not choice.library:
        return None
    env = dict(os.environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p]
    if choice.library not in preload:
        preload.insert(0, choice.library)
    env["LD_PRELOAD"] = ":".join(preload)
    libs = _mlx_libs_dir()
    extra = []
    if libs is not None and "cmeel" in choice.library:
        shim = _gfortran_shim(libs)
        if shim is None:
            return None
        extra = [str(shim), str(libs)]
    if extra:
        env["LD_LIBRARY_PATH"] = ":".join(extra + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env[_GUARD] = "1"
    return env


def ensure_fast_blas() -> None:
    """Re-exec this process once with an optimized BLAS preloaded (Linux CPU only).

    Call it first thing in an entry point, before anything imports mlx. If the
    re-exec is impossible or was already done, it returns and the process goes
    on (``blas_in_use()`` then tells what MLX actually got).
    """
    if os.environ.get(_GUARD) or "mlx.core" in sys.modules or not wants_cpu_blas():
        return
    env = preload_env(find_openblas())
    if env is None:
        return
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:
        return


def blas_in_use() -> str:
    """One line naming the BLAS that MLX calls in this process."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    try:
        lib = ctypes.CDLL(None)
        get_config = lib.openblas_get_config
        get_config.restype = ctypes.c_char_p
        threads = lib.openblas_get_num_threads()
        return f"{get_config().decode()} (threads={threads}, preloaded)"
    except (AttributeError, OSError):
        pass
    try:
        lib = ctypes.CDLL(None)
        lib.MKL_Get_Max_Threads  # noqa: B018 - presence check
        return "Intel MKL (preloaded)"
    except (AttributeError, OSError):
        pass
    if wants_cpu_blas():
        return "reference BLAS bundled with the mlx[cpu] wheel (slow) - " + find_openblas().reason
    return "none needed (GPU backend)"


def is_fast(desc: str) -> bool:
    return "reference" not in desc


def _openblas():
    try:
        lib = ctypes.CDLL(None)
        lib.openblas_get_num_threads  # noqa: B018 - presence check
        return lib
    except (AttributeError, OSError):
        return None


class blas_threads:
    """Run a block with ``n`` OpenBLAS threads (no-op without a preloaded OpenBLAS).

    Decoding multiplies a few rows at a time: there OpenBLAS's thread hand-off costs more
    than it saves (measured 4-12x slower rollout with 2 threads on a busy 2-core machine),
    while the update's large matmuls gain from every core. ``TUI_TRAINER_DECODE_THREADS``
    overrides the decode setting.
    """

    def __init__(self, n: int):
        self.n = n
        self.lib = _openblas()
        self.before = None

    def __enter__(self):
        if self.lib is not None and self.n > 0:
            self.before = self.lib.openblas_get_num_threads()
            self.lib.openblas_set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            self.lib.openblas_set_num_threads(self.before)


def decode_threads() -> int:
    try:
        return int(os.environ.get("TUI_TRAINER_DECODE_THREADS", "1"))
    except ValueError:
        return 1
