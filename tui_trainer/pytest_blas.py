"""pytest plugin (``-p tui_trainer.pytest_blas``, set in pyproject's addopts).

Loaded before pytest captures output, so the one-time re-exec with an
optimized BLAS preloaded (see engine/blas.py) keeps the terminal.
"""

from tui_trainer.engine.blas import ensure_fast_blas

ensure_fast_blas()
