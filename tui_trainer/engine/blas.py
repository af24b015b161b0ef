"""Pick a fast, safe BLAS for MLX's CPU backend on Linux.

The ``mlx[cpu]`` wheel links a bundled reference BLAS (netlib): f32 matmul runs
~20-40x slower than OpenBLAS. libmlx looks ``cblas_sgemm`` up at load time in the
process's global scope before its own dependencies, so a library loaded earlier
with ``RTLD_GLOBAL`` wins. ``ensure_fast_blas()`` does that in-process, before
``mlx`` is imported: no re-exec, no ``LD_PRELOAD``, nothing for child processes
to inherit.

The library must choose its kernels at run time: a build for one core (e.g. an
OpenBLAS compiled for SKYLAKEX) dies with SIGILL on a CPU without AVX-512. So:

1. candidates, in order: ``TUI_TRAINER_BLAS`` (a user's OpenBLAS/MKL, or ``off``);
   the ``scipy-openblas32`` wheel (a dependency on Linux; built ``DYNAMIC_ARCH``);
   a system ``libopenblas.so.0``;
2. each is **probed in a short child process** (load it, run a small sgemm in two
   transpose modes, check the result against exact arithmetic, time it against the
   bundled BLAS). A child that dies by a signal, answers wrong, or is slower than the
   bundled BLAS disqualifies the library, and one line says so;
3. scipy-openblas32 exports its symbols with a ``scipy_`` prefix, so a ten-line C
   shim (``cblas_sgemm`` -> ``scipy_cblas_sgemm``, ...) is compiled once with the
   system C compiler into ``~/.cache/tui-trainer/blas/`` (no ``-march``: it runs on
   any CPU) and loaded instead.

Probe results are cached per (library, size, mtime, CPU) in the same folder.
This module imports nothing heavy and never imports mlx.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_SHIM_SOURCE = r"""
/* tui-trainer: standard cblas_* / openblas_* names for a BLAS exported with a prefix. */
typedef int I;
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define P(name) CAT(PREFIX, name)
extern void P(cblas_sgemm)(I, I, I, I, I, I, float, const float*, I, const float*, I, float, float*, I);
extern void P(cblas_dgemm)(I, I, I, I, I, I, double, const double*, I, const double*, I, double, double*, I);
extern void P(cblas_cgemm)(I, I, I, I, I, I, const void*, const void*, I, const void*, I, const void*, void*, I);
extern char* P(openblas_get_config)(void);
extern char* P(openblas_get_corename)(void);
extern int P(openblas_get_num_threads)(void);
extern void P(openblas_set_num_threads)(int);
void cblas_sgemm(I o, I ta, I tb, I m, I n, I k, float al, const float* a, I lda, const float* b, I ldb,
                 float be, float* c, I ldc) { P(cblas_sgemm)(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }
void cblas_dgemm(I o, I ta, I tb, I m, I n, I k, double al, const double* a, I lda, const double* b, I ldb,
                 double be, double* c, I ldc) { P(cblas_dgemm)(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }
void cblas_cgemm(I o, I ta, I tb, I m, I n, I k, const void* al, const void* a, I lda, const void* b, I ldb,
                 const void* be, void* c, I ldc) { P(cblas_cgemm)(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }
char* openblas_get_config(void) { return P(openblas_get_config)(); }
char* openblas_get_corename(void) { return P(openblas_get_corename)(); }
int openblas_get_num_threads(void) { return P(openblas_get_num_threads)(); }
void openblas_set_num_threads(int n) { P(openblas_set_num_threads)(n); }
"""

# The probe runs in a child: only ctypes, no mlx, no numpy. argv: library, bundled BLAS (or "").
_PROBE = r"""
import ctypes, json, random, sys, time
out = {}
def load(path):
    lib = ctypes.CDLL(path)
    for pfx in ("", "scipy_"):
        try:
            fn = getattr(lib, pfx + "cblas_sgemm")
        except AttributeError:
            continue
        fn.restype = None
        fn.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                            ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        return lib, pfx, fn
    raise SystemExit("no cblas_sgemm in " + path)
lib, pfx, gemm = load(sys.argv[1])
out["prefix"] = pfx
for key, name in (("config", "openblas_get_config"), ("core", "openblas_get_corename")):
    f = getattr(lib, pfx + name, None)
    if f is not None:
        f.restype = ctypes.c_char_p
        out[key] = f().decode("utf-8", "replace")
if "config" not in out and hasattr(lib, "MKL_Get_Version_String"):
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, 256)
    out["config"] = buf.value.decode("utf-8", "replace")
ROW, NT, T = 101, 111, 112
def run(fn, m, n, k, ta, a, b):
    A = (ctypes.c_float * len(a))(*a); B = (ctypes.c_float * len(b))(*b); C = (ctypes.c_float * (m * n))()
    lda = m if ta == T else k
    fn(ROW, ta, NT, m, n, k, 1.0, A, lda, B, n, 0.0, C, n)
    return list(C)
rng = random.Random(0)
m, n, k = 37, 29, 53   # odd sizes reach the kernels' edge cases
a = [rng.uniform(-1, 1) for _ in range(m * k)]
b = [rng.uniform(-1, 1) for _ in range(k * n)]
worst = 0.0
for ta in (NT, T):
    got = run(gemm, m, n, k, ta, a, b)
    for i in range(m):
        for j in range(n):
            terms = [(a[p * m + i] if ta == T else a[i * k + p]) * b[p * n + j] for p in range(k)]
            bound = 4 * k * 2.0 ** -24 * sum(abs(t) for t in terms) + 1e-30   # float32 summation error
            worst = max(worst, abs(got[i * n + j] - sum(terms)) / bound)
out["error_ratio"] = worst   # <= 1: within float32 error of the exact product
def best(fn, size=192, reps=3):
    x = [rng.uniform(-1, 1) for _ in range(size * size)]
    A = (ctypes.c_float * len(x))(*x); C = (ctypes.c_float * len(x))()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(ROW, NT, NT, size, size, size, 1.0, A, size, A, size, 0.0, C, size)
        times.append(time.perf_counter() - t)
    return min(times)
out["seconds"] = best(gemm)
if sys.argv[2]:
    out["bundled_seconds"] = best(load(sys.argv[2])[2])
print(json.dumps(out))
"""

_INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                      "amx_tile", "asimd", "asimdhp", "sve", "sve2", "i8mm", "bf16")


@dataclass
class Probe:
    library: str
    ok: bool
    line: str  # one line: what the probe found
    config: str = ""
    core: str = ""
    prefix: str = ""
    seconds: float | None = None
    bundled_seconds: float | None = None


@dataclass
class BlasStatus:
    """What ``ensure_fast_blas`` did in this process (``doctor`` prints it)."""

    attempted: bool = False
    loaded: str | None = None  # the library loaded with RTLD_GLOBAL (a shim, or the library itself)
    source: str = ""  # where it came from
    probes: list[Probe] = field(default_factory=list)
    message: str = ""  # the one line shown when falling back to the bundled BLAS


STATUS = BlasStatus()
_HANDLE = None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tui-trainer" / "blas"


def _site_dirs() -> list[Path]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages"))
    return [Path(d) for d in sorted(dirs) if Path(d).is_dir()]


def _mlx_libs_dir() -> Path | None:
    for site in _site_dirs():
        for name in ("mlx_cpu.libs", "mlx.libs"):
            if (site / name).is_dir():
                return site / name
    return None


def bundled_blas() -> str | None:
    """The reference BLAS that the mlx[cpu] wheel links (the speed to beat)."""
    libs = _mlx_libs_dir()
    found = sorted(glob.glob(str(libs / "libblas*.so*"))) if libs else []
    return found[0] if found else None


def cpu_features() -> str:
    """The CPU's vector features that matter to BLAS kernels, e.g. ``avx avx2 fma``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            break
    return " ".join(f for f in _INTERESTING_FLAGS if f in flags) or "(no SIMD flags reported)"


def _cpu_signature() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "CPU part")):
                model = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{cpu_features()}"


def wants_cpu_blas() -> bool:
    """True on Linux with the mlx[cpu] wheel, unless the GPU is asked for."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("TUI_TRAINER_DEVICE", "").lower() == "gpu":
        return False
    libs = _mlx_libs_dir()
    return libs is not None and libs.name == "mlx_cpu.libs"


def candidates() -> list[tuple[str, str]]:
    """(library, where it came from) in the order they are tried; [] when the user said off."""
    user = os.environ.get("TUI_TRAINER_BLAS")
    if user:
        if user.lower() in ("0", "off", "none", "reference"):
            return []
        return [(user, "TUI_TRAINER_BLAS")]
    found: list[tuple[str, str]] = []
    for site in _site_dirs():
        for lib in sorted(glob.glob(str(site / "scipy_openblas32" / "lib" / "libscipy_openblas*.so*"))):
            found.append((lib, "the scipy-openblas32 wheel"))
    for lib in ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
                "/usr/lib64/libopenblas.so.0", "/usr/lib/libopenblas.so.0"):
        if Path(lib).is_file():
            found.append((lib, "the system OpenBLAS"))
    return found


def _signal_name(rc: int) -> str:
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"
    return name + (" (illegal instruction: built for another CPU)" if name == "SIGILL" else "")


def _run_probe(library: str) -> Probe:
    bundled = bundled_blas() or ""
    # one thread on both sides: the comparison is of kernels, not of how busy the machine is
    env = {**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _PROBE, library, bundled], capture_output=True,
                              text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Probe(library, False, f"{library}: the probe's sgemm did not finish in 120 s")
    except OSError as exc:
        return Probe(library, False, f"{library}: cannot start the probe ({exc})")
    if proc.returncode < 0:
        return Probe(library, False, f"{library}: the probe died with {_signal_name(proc.returncode)}")
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Probe(library, False, f"{library}: does not load as a BLAS ({err[:200]})")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Probe(library, False, f"{library}: the probe printed no result")
    p = Probe(library, False, "", out.get("config", ""), out.get("core", ""), out.get("prefix", ""),
              out.get("seconds"), out.get("bundled_seconds"))
    if not out.get("error_ratio", 1e9) <= 1.0:
        p.line = f"{library}: sgemm gives wrong results ({out.get('error_ratio', 0):.3g}x float32 error)"
    elif p.bundled_seconds is not None and p.seconds > p.bundled_seconds:
        p.line = (f"{library}: slower than the bundled BLAS "
                  f"({p.seconds * 1e3:.1f} ms vs {p.bundled_seconds * 1e3:.1f} ms for a 192^3 sgemm)")
    else:
        p.ok = True
        speed = f", {p.bundled_seconds / max(p.seconds, 1e-9):.0f}x the bundled BLAS" if p.bundled_seconds else ""
        p.line = f"ok: sgemm correct{speed}" + (f", kernels {p.core}" if p.core else "")
    return p


def probe(library: str) -> Probe:
    """Probe ``library`` in a child process (result cached per library file and CPU)."""
    try:
        st = Path(library).stat()
    except OSError:
        return Probe(library, False, f"{library}: no such file")
    key = hashlib.sha256(f"{Path(library).resolve()}|{st.st_size}|{st.st_mtime_ns}|{_cpu_signature()}|"
                         f"{bundled_blas()}".encode()).hexdigest()[:24]
    path = cache_dir() / f"probe-{key}.json"
    try:
        return Probe(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    result = _run_probe(library)
    if "did not finish" not in result.line:  # a busy machine is no verdict on the library
        _atomic_write(path, json.dumps(asdict(result)).encode())
    return result


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache we cannot write is only a cache


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc.split()[0]):
            return cc
    return None


def build_shim(library: str, prefix: str) -> tuple[str | None, str]:
    """A shared library giving ``library``'s ``{prefix}cblas_*`` symbols their standard names."""
    lib = Path(library).resolve()
    st = lib.stat()
    key = hashlib.sha256(f"{lib}|{st.st_size}|{st.st_mtime_ns}|{prefix}|{_SHIM_SOURCE}".encode()).hexdigest()[:16]
    out = cache_dir() / f"libtui_cblas-{key}.so"
    if out.is_file():
        return str(out), "cached"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc) to build the cblas shim it needs: install gcc, or set TUI_TRAINER_BLAS"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / "shim.c"
            src.write_text(_SHIM_SOURCE)
            built = Path(tmp) / out.name
            # the library's own soname may differ from its file name: link it by full path
            cmd = [*cc.split(), "-O2", "-shared", "-fPIC", f"-DPREFIX={prefix}", "-o", str(built), str(src),
                   str(lib), f"-Wl,-rpath,{lib.parent}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                return None, f"building the cblas shim failed ({err[:200]})"
            os.replace(built, out)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"building the cblas shim failed ({exc})"
    return str(out), "built"


# what could preload a BLAS into a child process (a user's LD_PRELOAD, macOS's equivalent, the
# library ensure_fast_blas was told to use): a child such as pip, compiling or importing other
# native code, must not get our BLAS forced into it
PRELOAD_VARS = ("LD_PRELOAD", "DYLD_INSERT_LIBRARIES", "TUI_TRAINER_BLAS")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) without the BLAS preload variables, for a child process."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in PRELOAD_VARS}


THREAD_TIMEOUT = 4  # log2 of the cycles an idle OpenBLAS worker spins before it sleeps (its minimum)
WIDE_BFS = 2000  # MLX_BFS_MAX_WIDTH on the CPU (MLX's default 20 runs one lane's graph before the next's)


def ensure_fast_blas() -> BlasStatus:
    """Load a probed, fast BLAS with RTLD_GLOBAL so MLX binds to it (Linux, mlx[cpu] only);
    also widen MLX's evaluation order for parallel lanes (engine/lanes.py).

    Call it before anything imports mlx. On any failure the process goes on with the
    bundled BLAS and ``STATUS.message`` holds the one line that says why (printed to stderr).
    """
    global _HANDLE
    if wants_cpu_blas():
        # parallel lanes need MLX to interleave their streams' work (engine/lanes.py); read once,
        # at MLX's first evaluation
        os.environ.setdefault("MLX_BFS_MAX_WIDTH", str(WIDE_BFS))
        # OpenBLAS's worker threads spin up to 2**28 cycles after each call before they sleep:
        # decoding (a BLAS call every few small MLX ops) kept a core spinning that MLX's graph
        # building wanted. 2**4: they sleep at once (16 rows of SmolLM2 on 2 cores: 150-157 vs
        # 160-177 ms a token, 20% less CPU time; the update's lanes run one thread each)
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", str(THREAD_TIMEOUT))
    if STATUS.attempted or "mlx.core" in sys.modules or not wants_cpu_blas():
        return STATUS
    STATUS.attempted = True
    cands = candidates()
    if not cands:
        STATUS.message = ("TUI_TRAINER_BLAS=off: using the reference BLAS bundled with mlx[cpu] (slow)"
                          if os.environ.get("TUI_TRAINER_BLAS") else
                          "no optimized BLAS found (pip install scipy-openblas32, or set TUI_TRAINER_BLAS): "
                          "using the reference BLAS bundled with mlx[cpu] (slow)")
        _say(STATUS.message, quiet=bool(os.environ.get("TUI_TRAINER_BLAS")))
        return STATUS
    reasons = []
    for library, source in cands:
        result = probe(library)
        STATUS.probes.append(result)
        if not result.ok:
            reasons.append(result.line)
            continue
        target = library
        if result.prefix:
            target, how = build_shim(library, result.prefix)
            if target is None:
                result.ok = False
                result.line = f"{library}: {how}"
                reasons.append(result.line)
                continue
        try:
            _HANDLE = ctypes.CDLL(target, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            result.ok = False
            result.line = f"{target}: cannot be loaded ({exc})"
            reasons.append(result.line)
            continue
        STATUS.loaded, STATUS.source = target, source
        return STATUS
    STATUS.message = "BLAS probe: " + "; ".join(reasons) + ": using the reference BLAS bundled with mlx[cpu] (slow)"
    _say(STATUS.message)
    return STATUS


def _say(line: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"tui-trainer: {line}", file=sys.stderr, flush=True)


def blas_in_use() -> str:
    """One line naming the BLAS that MLX calls in this process, with the kernels it picked."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    lib = _openblas()
    if lib is not None:
        lib.openblas_get_config.restype = ctypes.c_char_p
        desc = lib.openblas_get_config().decode()
        core = ""
        if hasattr(lib, "openblas_get_corename"):
            lib.openblas_get_corename.restype = ctypes.c_char_p
            core = f", kernels {lib.openblas_get_corename().decode()}"
        src = f" from {STATUS.source}" if STATUS.source else ""
        return f"{desc}{core} (threads={lib.openblas_get_num_threads()}, loaded{src})"
    try:
        ctypes.CDLL(None).MKL_Get_Max_Threads  # noqa: B018 - presence check
        return "Intel MKL (loaded)"
    except (AttributeError, OSError):
        pass
    if wants_cpu_blas():
        return "reference BLAS bundled with the mlx[cpu] wheel (slow)"
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
    """Run a block with ``n`` OpenBLAS threads (no-op without an OpenBLAS loaded).

    The update's large matmuls gain from every core; decoding picks its own count
    (``DecodeThreads``).
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


def decode_threads() -> int | None:
    """``TUI_TRAINER_DECODE_THREADS`` when set (a fixed count for decoding); None: probe."""
    value = os.environ.get("TUI_TRAINER_DECODE_THREADS")
    try:
        return max(1, int(value)) if value else None
    except ValueError:
        return None


class DecodeThreads:
    """OpenBLAS's thread count for one rollout's decode, chosen by timing the decode itself.

    Decoding multiplies a few rows at a time, where OpenBLAS's thread hand-off can cost more
    than the second core gives (4-12x slower with 2 threads on a busy 2-core machine), or win
    (a quiet one); which, depends on the machine and its load at the time. So tokens
    ``START`` .. are decoded in one window of ``WINDOW`` tokens per candidate (1 thread, then
    every thread OpenBLAS has), each window timed after a sync, and the faster per token
    decodes the rest of the rollout (the prefill before runs with every thread) (``chosen``; ``seconds_per_token`` holds the timings).
    A fixed count (``TUI_TRAINER_DECODE_THREADS``), one thread in all, no OpenBLAS loaded or
    a decode too short to time: no probe, one thread (or the fixed count).
    """

    START, WINDOW = 2, 4

    def __init__(self, fixed: int | None = None, max_tokens: int = 0, lib=None, clock=time.perf_counter):
        self.lib = lib if lib is not None else _openblas()
        self.before = self.lib.openblas_get_num_threads() if self.lib is not None else 1
        self.clock = clock
        self.chosen = fixed or 1
        self.seconds_per_token: dict[int, float] = {}
        probe = fixed is None and self.lib is not None and self.before > 1
        self.candidates = [1, self.before] if probe else []
        self.marks = [self.START + i * self.WINDOW for i in range(len(self.candidates) + 1)] if probe else []
        if self.candidates and max_tokens <= self.marks[-1] + self.WINDOW:
            self.candidates, self.marks = [], []  # too short to pay for the syncs
        self._t = 0.0

    def _set(self, n: int) -> None:
        if self.lib is not None:
            self.lib.openblas_set_num_threads(n)

    def __enter__(self):
        if not self.candidates:  # probing: the prefill and first tokens keep every thread
            self._set(self.chosen)
        return self

    def __exit__(self, *exc):
        self._set(self.before)

    def before_token(self, t: int, sync) -> None:
        """Called before decode position ``t`` is dispatched; ``sync()`` waits for the work so far."""
        if t not in self.marks:
            return
        sync()
        now = self.clock()
        i = self.marks.index(t)
        if i > 0:
            self.seconds_per_token[self.candidates[i - 1]] = (now - self._t) / self.WINDOW
        if i < len(self.candidates):
            self._set(self.candidates[i])
            self._t = now
            return
        self.chosen = min(self.seconds_per_token, key=self.seconds_per_token.get)
        self._set(self.chosen)
        self.marks = []
