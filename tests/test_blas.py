"""The BLAS that MLX uses on Linux CPU: fast, portable across CPUs, probed before use, and invisible
to child processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tui_trainer.engine.blas import blas_in_use, candidates, is_fast, probe, wants_cpu_blas

linux_cpu = pytest.mark.skipif(not (sys.platform.startswith("linux") and wants_cpu_blas()),
                               reason="the mlx[cpu] wheel on Linux only")
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


def child_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TUI_TRAINER_BLAS", "LD_PRELOAD")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # a fresh probe, not a cached verdict
    env.update(extra)
    return env


def build_lib(tmp_path, name: str, body: str) -> str:
    """A shared library whose ``cblas_sgemm`` does ``body``."""
    src = tmp_path / f"{name}.c"
    src.write_text(textwrap.dedent("""
        void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float al, const float* a, int lda,
                         const float* b, int ldb, float be, float* c, int ldc) { %s }
    """) % body)
    out = tmp_path / f"lib{name}.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return str(out)


@linux_cpu
def test_tests_run_on_optimized_blas():
    desc = blas_in_use()
    assert is_fast(desc), desc
    assert "OpenBLAS" in desc or "MKL" in desc


@linux_cpu
def test_chosen_blas_selects_kernels_at_run_time():
    """A BLAS built for one core (e.g. SKYLAKEX) dies with SIGILL elsewhere: what we load must be
    DYNAMIC_ARCH (or MKL), so such a build cannot come back through a dependency bump."""
    desc = blas_in_use()
    assert "DYNAMIC_ARCH" in desc or "MKL" in desc, desc
    found = [lib for lib, source in candidates() if "scipy-openblas32" in source]
    assert found, "the scipy-openblas32 dependency is not installed"
    result = probe(found[0])
    assert result.ok, result.line
    assert "DYNAMIC_ARCH" in result.config, result.config
    assert result.seconds < result.bundled_seconds


@linux_cpu
@needs_cc
@pytest.mark.parametrize("kind, body, expect", [
    ("crash", "__builtin_trap();", "died with SIG"),        # SIGILL on x86-64, SIGTRAP on aarch64
    ("wrong", "(void)c;", "wrong results"),                 # leaves C untouched
])
def test_a_bad_blas_is_refused_and_the_program_runs_on(tmp_path, kind, body, expect):
    lib = build_lib(tmp_path, kind, body)
    code = ("from tui_trainer.engine.blas import ensure_fast_blas, blas_in_use; ensure_fast_blas();"
            "import mlx.core as mx; a = mx.ones((64, 64)); print(int((a @ a).sum().item())); print(blas_in_use())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=child_env(tmp_path, TUI_TRAINER_BLAS=lib))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(64 ** 3)  # the matmul ran, on the bundled BLAS
    assert "reference BLAS" in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if "BLAS probe" in ln]
    assert len(lines) == 1 and expect in lines[0] and lib in lines[0], proc.stderr
    # doctor shows the same verdict
    doc = subprocess.run([sys.executable, "-m", "tui_trainer", "doctor"], capture_output=True, text=True,
                         timeout=300, env=child_env(tmp_path, TUI_TRAINER_BLAS=lib))
    assert expect in doc.stdout and "BLAS fix" in doc.stdout, doc.stdout + doc.stderr
    assert "Traceback" not in doc.stdout + doc.stderr


@linux_cpu
def test_children_inherit_no_blas_environment(tmp_path):
    """The BLAS is loaded in-process: pip, shells and llama.cpp helpers started by the program get
    the environment it was started with, no LD_PRELOAD / LD_LIBRARY_PATH of ours."""
    code = ("import json, os, subprocess, sys\n"
            "before = dict(os.environ)\n"
            "from tui_trainer.engine.blas import ensure_fast_blas, blas_in_use\n"
            "ensure_fast_blas()\n"
            "import mlx.core as mx\n"
            "mx.eval(mx.ones((8, 8)) @ mx.ones((8, 8)))\n"
            "child = subprocess.run([sys.executable, '-c', 'import json, os; print(json.dumps(dict(os.environ)))'],"
            " capture_output=True, text=True).stdout\n"
            "print(json.dumps({'fast': blas_in_use(), 'before': before, 'child': json.loads(child)}))\n")
    env = child_env(tmp_path)
    env.pop("LD_LIBRARY_PATH", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert is_fast(out["fast"]), out["fast"]
    for key in ("LD_PRELOAD", "LD_LIBRARY_PATH"):
        assert out["child"].get(key) == out["before"].get(key), key
    assert out["child"] == out["before"]  # nothing at all added to what the child inherits


class FakeOpenBLAS:
    """openblas_get/set_num_threads of a library with ``n`` threads; records every set."""

    def __init__(self, n: int):
        self.n, self.sets = n, []

    def openblas_get_num_threads(self):
        return self.n

    def openblas_set_num_threads(self, n):
        self.sets.append(n)


@pytest.mark.parametrize("slow,expected", [(1, 2), (2, 1)])
def test_decode_threads_probe_keeps_the_faster_count(slow, expected):
    """Positions 2..5 decode with 1 thread, 6..9 with all (2); the faster per token decodes the
    rest; the library's own count comes back at the end."""
    from tui_trainer.engine.blas import DecodeThreads

    lib, now, synced = FakeOpenBLAS(2), [0.0], []
    probe = DecodeThreads(None, max_tokens=64, lib=lib, clock=lambda: now[0])
    with probe:
        assert lib.sets == []  # the prefill keeps every thread
        for t in range(1, 20):
            probe.before_token(t, lambda: synced.append(t))
            now[0] += 3.0 if lib.sets and lib.sets[-1] == slow else 1.0
    assert synced == [2, 6, 10] and probe.chosen == expected
    assert probe.seconds_per_token == {slow: 3.0, 3 - slow: 1.0}
    assert lib.sets == [1, 2, expected, 2]


def test_decode_threads_fixed_or_short_decodes_do_not_probe(monkeypatch):
    from tui_trainer.engine.blas import DecodeThreads, decode_threads

    lib = FakeOpenBLAS(2)
    with DecodeThreads(3, max_tokens=64, lib=lib) as fixed:
        fixed.before_token(2, lambda: pytest.fail("no sync without a probe"))
    assert fixed.chosen == 3 and lib.sets == [3, 2]
    with DecodeThreads(None, max_tokens=12, lib=FakeOpenBLAS(2)) as short:
        assert short.chosen == 1 and short.marks == []
    with DecodeThreads(None, max_tokens=64, lib=FakeOpenBLAS(1)) as single:
        assert single.marks == []
    monkeypatch.setenv("TUI_TRAINER_DECODE_THREADS", "2")
    assert decode_threads() == 2
    monkeypatch.delenv("TUI_TRAINER_DECODE_THREADS")
    assert decode_threads() is None


SPIN_PROBE = """
import json, time
from tui_trainer.engine.blas import ensure_fast_blas
ensure_fast_blas()
import mlx.core as mx
a = mx.random.normal((512, 512))
mx.eval(a)
spent = []
for _ in range(3):
    mx.eval(a @ a)  # wakes the BLAS workers
    c0 = time.process_time()
    time.sleep(0.3)
    spent.append(time.process_time() - c0)
print(json.dumps(spent))
"""


@linux_cpu
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: OpenBLAS starts no worker threads")
def test_idle_blas_workers_sleep_at_once(tmp_path):
    """After a BLAS call, OpenBLAS's workers spin ~2**28 cycles (~0.1 s of CPU) before they sleep
    unless OPENBLAS_THREAD_TIMEOUT says otherwise; the program sets it (engine/blas.py), so an
    idle 0.3 s costs no CPU. The explicit default shows the spin the test would catch."""
    def idle_cpu(**extra) -> list[float]:
        env = child_env(tmp_path, **extra)
        if not extra:  # what the program sets itself, not what this test process inherited
            env.pop("OPENBLAS_THREAD_TIMEOUT", None)
        proc = subprocess.run([sys.executable, "-c", SPIN_PROBE], capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    assert min(idle_cpu()) < 0.02  # ~1e-4 s: the workers sleep
    # ~0.1 s a spin on an idle machine (2**28 cycles); less where the spinning worker is descheduled
    assert max(idle_cpu(OPENBLAS_THREAD_TIMEOUT="28")) > 0.04
