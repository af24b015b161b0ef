import sys

import pytest

from tui_trainer.engine.blas import blas_in_use, is_fast, wants_cpu_blas


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU only")
def test_tests_run_on_optimized_blas():
    if not wants_cpu_blas():
        pytest.skip("not the mlx[cpu] wheel")
    desc = blas_in_use()
    assert is_fast(desc), desc
    assert "OpenBLAS" in desc or "MKL" in desc
