"""A batch's rows split over the CPU's cores as parallel MLX streams ("lanes").

MLX's CPU backend runs each stream's work in one thread: the matmuls go to BLAS (with its
own threads), but everything else (softmax, SwiGLU's sigmoid, norms, RoPE, the residual adds,
the log-sum-exp over the vocabulary) runs on one core. Profiling a PPO minibatch of the
embedded 135M model on 2 cores: ~40% of the time in such single-threaded ops while
OpenBLAS's second thread spun idle (perf: blas_thread_server ~22% of all samples).

So the update and the reference pass cut each minibatch's rows into one part per lane,
build each part's graph on its own stream (its loss, gradients and statistics), and sum
them: every core runs every kind of op, and each lane's matmuls run on one BLAS thread
(``blas_threads(1)`` while lanes work). The parts' sums are the minibatch's: the loss is
divided by the minibatch's token count, as for several ranks (engine/distributed.py), so
only float summation order differs.

MLX orders an evaluation's work depth-first within a width of ``MLX_BFS_MAX_WIDTH`` arrays
(default 20): one lane's graph would run to its end before the other's starts. A wider order
(``WIDE_BFS``, set by ``ensure_fast_blas`` before MLX's first evaluation) interleaves them;
the peak memory of a minibatch stayed the same (848 vs 854 MB).

Measured (2 cores, one minibatch of 4 rows x 114 tokens, forward + backward): one stream
with 2 BLAS threads 3.08 s; two lanes with 1 BLAS thread each 2.58 s (width 20: 4.28 s).
One lane on a GPU (MLX's kernels use the device already), on one core, for one row, or
with ``TUI_TRAINER_LANES=1``.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import mlx.core as mx

from tui_trainer.engine.blas import WIDE_BFS, blas_threads

__all__ = ["WIDE_BFS", "Lanes", "cpu_count", "lane_count"]


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def lane_count(ranks: int = 1) -> int:
    """How many lanes: ``TUI_TRAINER_LANES`` when set, else one per core on the CPU (at most 8), 1 on a
    GPU, 1 for each of several ranks (``--launch N`` tells its ranks cores / N)."""
    value = os.environ.get("TUI_TRAINER_LANES", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    if mx.default_device() != mx.cpu or ranks > 1:
        return 1
    return max(1, min(8, cpu_count()))


_THREAD = threading.local()  # MLX streams belong to the thread that made them: each thread makes its own, once


def _cpu_streams(n: int) -> list:
    streams = _THREAD.__dict__.setdefault("streams", [])
    while len(streams) < n:
        streams.append(mx.new_stream(mx.cpu))
    return streams[:n]


class Lanes:
    """``n`` MLX streams on the CPU (one: the default stream) and the split of rows over them."""

    def __init__(self, n: int | None = None, ranks: int = 1):
        self.n = lane_count(ranks) if n is None else max(1, n)
        self.streams = _cpu_streams(self.n) if self.n > 1 else [mx.default_stream(mx.default_device())]

    def split(self, rows: list[int]) -> list[tuple[mx.Stream, list[int]]]:
        """``rows`` in up to ``n`` consecutive, near-equal, non-empty parts, each with its stream."""
        k = min(self.n, len(rows))
        if k <= 1:
            return [(self.streams[0], list(rows))] if rows else []
        size, extra = divmod(len(rows), k)
        parts, start = [], 0
        for i in range(k):
            end = start + size + (1 if i < extra else 0)
            parts.append((self.streams[i], list(rows[start:end])))
            start = end
        return parts

    @contextmanager
    def blas(self):
        """One BLAS thread per lane while lanes work (the lanes are the parallelism)."""
        if self.n > 1:
            with blas_threads(1):
                yield
        else:
            yield
