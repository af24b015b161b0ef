"""`tui-trainer doctor`, run as a user would: a fresh process that sets up its BLAS by itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tui_trainer.engine.blas import wants_cpu_blas


def clean_env(**extra) -> dict[str, str]:
    """This environment without a user's BLAS choice, so the doctor process finds the BLAS by itself."""
    env = dict(os.environ)
    env.pop("TUI_TRAINER_BLAS", None)
    env.update(extra)
    return env


def doctor(**env) -> tuple[int, dict[str, str], str]:
    proc = subprocess.run([sys.executable, "-m", "tui_trainer", "doctor"], capture_output=True, text=True,
                          timeout=120, env=clean_env(**env))
    fields = {}
    for line in proc.stdout.splitlines():
        label, _, value = line.partition(":")
        if value and label.strip():
            fields[label.strip()] = value.strip()
    return proc.returncode, fields, proc.stdout + proc.stderr


def test_doctor_reports_every_part():
    rc, fields, out = doctor()
    assert rc == 0, out
    assert "Traceback" not in out
    for label in ("platform", "python", "mlx", "BLAS", "default model", "llama.cpp", "judge plugins"):
        assert label in fields, out
    assert sys.version.split()[0] in fields["python"]
    import mlx.core as mx

    assert mx.__version__ in fields["mlx"] and "default device" in fields["mlx"]
    assert "SmolLM2-135M-Instruct" in fields["default model"] and "MiB" in fields["default model"]
    assert "llama-cpp-python" in fields["llama.cpp"]
    assert "builtin" in fields["judge plugins"], out
    assert "TUI_TRAINER_DECODE_THREADS" in fields["decode threads"], out
    from tui_trainer.engine.lanes import lane_count

    assert fields["update lanes"].startswith(f"{lane_count()} "), out  # the doctor runs in a child: same env
    assert "exp" in fields["update lanes"], out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS set-up is for Linux CPU")
def test_doctor_names_openblas_on_linux():
    if not wants_cpu_blas():
        pytest.skip("not the mlx[cpu] wheel")
    rc, fields, out = doctor()
    assert "OpenBLAS" in fields["BLAS"] and "DYNAMIC_ARCH" in fields["BLAS"] and "loaded" in fields["BLAS"], out
    assert "kernels " in fields["BLAS"] and "ok: sgemm correct" in fields["BLAS probe"], out
    assert "avx" in fields["CPU features"] or "asimd" in fields["CPU features"], out
    assert "BLAS fix" not in fields


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS set-up is for Linux CPU")
def test_doctor_says_when_blas_is_slow_and_carries_on():
    if not wants_cpu_blas():
        pytest.skip("not the mlx[cpu] wheel")
    rc, fields, out = doctor(TUI_TRAINER_BLAS="off")
    assert rc == 0, out
    assert "reference BLAS" in fields["BLAS"] and "slow" in fields["BLAS"], out
    assert "TUI_TRAINER_BLAS" in fields["BLAS fix"], out
