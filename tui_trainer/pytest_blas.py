"""pytest plugin (``-p tui_trainer.pytest_blas``, set in pyproject's addopts).

Loaded before any test module imports mlx, so the probed optimized BLAS (see
engine/blas.py) is in place when MLX binds its BLAS symbols.
"""

from tui_trainer.engine.blas import ensure_fast_blas

ensure_fast_blas()
