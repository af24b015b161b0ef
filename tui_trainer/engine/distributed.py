"""Data-parallel training over MLX's own distributed engine (``mx.distributed``, ``mlx.launch``).

A job started by ``mlx.launch`` (ring over TCP / Thunderbolt, JACCL, MPI, NCCL) runs one
process per rank; :func:`world` is its group (size 1 without a launcher: the one-process
run, where every method here is the identity). What the trainer shares goes through a few
collectives, all on this object:

* :meth:`Ranks.share` — the rows of the step's global batch this rank rolls out;
* :meth:`Ranks.sum` — ``all_sum`` of batch sums and counts (whitening, means, the KL);
* :meth:`Ranks.gather` / :meth:`Ranks.gather_json` — every rank's rows / records, in rank order;
* :meth:`Ranks.average_gradients` — ``mlx.nn.average_gradients``;
* :meth:`Ranks.broadcast_arrays` / :meth:`Ranks.broadcast_json` — rank 0's state to all
  (an ``all_sum`` where the other ranks give zeros);
* :meth:`Ranks.raise_if_any` and :meth:`Ranks.check_same` — a failure or a different config /
  model on any rank stops every rank with the same one line, instead of a hang.

A rank that dies or hangs must not leave the others waiting forever. A collective whose
peer is gone raises :class:`RankLost` (the ring backend notices a closed socket at once);
and once :meth:`Ranks.watch` is on (the trainer's ``rank_timeout``), a watchdog thread ends
this process with one line and exit code :data:`RANK_TIMEOUT_EXIT` when one collective has
waited longer than the timeout for the other ranks (a host that vanished, a rank stuck). The
wait for a person's answers on rank 0 is ``patient``: not timed.

Every rank must run the same collectives in the same order; the trainer's code paths only
branch on values that are already global. MLX builds collectives lazily and runs them when a
result is evaluated, in an order that follows each rank's own graph; so every method here
evaluates its collective before it returns (two ranks whose graphs differ, e.g. one with no
rows in a minibatch, would otherwise pair one rank's gradient sum with the other's statistics).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from typing import Any, Callable, Sequence

import mlx.core as mx
import mlx.nn as nn

from tui_trainer.errors import ConfigError, TrainerError

_WORLD: "Ranks | None" = None
RANK_TIMEOUT_EXIT = 124  # a rank's exit code when a collective waited past rank_timeout (timeout(1)'s)


class ReportedByRank0(TrainerError):
    """An error of the whole job that rank 0 reports; the other ranks stop with it quietly
    (one line for the job, not one per rank)."""

    quiet = True


class RankLost(TrainerError):
    """A collective failed because another rank is gone (it died, or its connection broke).
    Not bad input: the run failed (exit code 1); ``train --launch`` sums it up in one line."""

    exit_code = 1


def world() -> "Ranks":
    """The job's ranks (``mx.distributed.init()``, once per process)."""
    global _WORLD
    if _WORLD is None:
        group = mx.distributed.init() if mx.distributed.is_available() else None
        _WORLD = Ranks(group)
    return _WORLD


class Ranks:
    """The ranks of a data-parallel job and the collectives the trainer uses."""

    def __init__(self, group: Any = None):
        self.group = group if group is not None and group.size() > 1 else None
        self.rank = group.rank() if self.group is not None else 0
        self.size = group.size() if self.group is not None else 1
        self._since: float | None = None  # when the collective in flight began (None: none, or a patient one)
        self.waited = 0.0  # seconds this rank has spent in collectives (waiting for the others, mostly)
        self._watchdog: threading.Thread | None = None
        self.timeout: float | None = None

    def _now(self, inputs: Any, collective: Callable[[], Any], patient: bool = False):
        """``collective()`` (over ``inputs``: an array or a tree of them) built and evaluated: it
        has run when this returns. ``inputs`` are evaluated first, on their own: their work (a
        backward pass, say) is this rank's, and its errors are its own. The collective alone is
        what ``waited`` counts and the watchdog times (unless ``patient``); a peer that is gone
        makes it raise :class:`RankLost`."""
        mx.eval(inputs)
        began = time.monotonic()
        self._since = None if patient else began
        try:
            out = collective()
            mx.eval(out)
        except RuntimeError as exc:  # the ring backend: "[ring] connection to a peer was lost"
            raise RankLost(f"lost the other ranks ({' '.join(str(exc).split())}); "
                           "a rank died or its connection broke") from None
        finally:
            self._since = None
            self.waited += time.monotonic() - began
        return out

    def watch(self, timeout: float | None, on_timeout: Callable[[str], None] | None = None) -> None:
        """From now on a collective that waits more than ``timeout`` seconds for the other ranks
        calls ``on_timeout(message)`` (default: print the one line and end this process with
        :data:`RANK_TIMEOUT_EXIT`: the engine thread sits inside MLX and cannot be interrupted;
        mlx.launch then stops the other ranks). None or 0: no watchdog. One process: nothing."""
        self.timeout = timeout or None
        if not self.active or self.timeout is None or self._watchdog is not None:
            return
        act = on_timeout or _end_process

        def watch() -> None:
            while True:
                time.sleep(min(1.0, self.timeout / 10))
                since = self._since
                if since is not None and time.monotonic() - since > self.timeout:
                    act(f"rank {self.rank}: waited more than rank_timeout ({self.timeout:g} s) for the other "
                        "ranks in one collective; a rank died or hangs, so the job stops")
                    return

        self._watchdog = threading.Thread(target=watch, name="rank-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory and shows the run."""
        return self.rank == 0

    # ------------------------------------------------------------- the batch
    def share(self, n: int, what: str = "batch_size") -> slice:
        """This rank's consecutive share of ``n`` items (``n`` must split evenly)."""
        if n % self.size:
            raise ConfigError(f"{what} {n} does not split over {self.size} ranks; use a multiple of {self.size}")
        k = n // self.size
        return slice(self.rank * k, (self.rank + 1) * k)

    # ------------------------------------------------------------- reductions
    def sum(self, x: mx.array) -> mx.array:
        """``x`` summed over the ranks (the identity on one process)."""
        if not self.active:
            return x
        return self._now(x, lambda: mx.distributed.all_sum(x, group=self.group))

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Python numbers summed over the ranks, in one collective."""
        if not self.active or not values:
            return [float(v) for v in values]
        return self.sum(mx.array([float(v) for v in values], dtype=mx.float32)).tolist()

    def max_floats(self, values: Sequence[float]) -> list[float]:
        if not self.active or not values:
            return [float(v) for v in values]
        x = mx.array([float(v) for v in values], dtype=mx.float32)
        return self._now(x, lambda: mx.distributed.all_max(x, group=self.group)).tolist()

    def gather(self, x: mx.array, patient: bool = False) -> mx.array:
        """Every rank's ``x`` (same shape on every rank) concatenated along axis 0, in rank order."""
        if not self.active:
            return x
        return self._now(x, lambda: mx.distributed.all_gather(x, group=self.group), patient)

    def gather_json(self, obj: Any, patient: bool = False) -> list[Any]:
        """Every rank's JSON-able ``obj``, in rank order (bytes padded to the longest).
        ``patient``: no time limit (waiting for a person on rank 0)."""
        if not self.active:
            return [obj]
        data = json.dumps(obj).encode()
        sizes = [int(n) for n in self.gather(mx.array([len(data)], dtype=mx.int32), patient).tolist()]
        width = max(sizes)
        buf = mx.array(list(data) + [0] * (width - len(data)), dtype=mx.uint8)
        rows = self.gather(buf, patient).reshape(self.size, width).tolist()
        return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]

    def average_gradients(self, grads: dict) -> dict:
        """``mlx.nn.average_gradients`` over the ranks (the identity on one process)."""
        if not self.active:
            return grads
        return self._now(grads, lambda: nn.average_gradients(grads, group=self.group))

    # ------------------------------------------------------------- rank 0 -> all
    def broadcast_json(self, obj: Any, patient: bool = False) -> Any:
        """Rank 0's ``obj`` on every rank (``patient``: see :meth:`gather_json`)."""
        return self.gather_json(obj if self.is_main else None, patient)[0] if self.active else obj

    def broadcast_arrays(self, arrays: dict[str, mx.array]) -> dict[str, mx.array]:
        """Rank 0's named arrays on every rank (the others pass ``{}``): names, shapes and dtypes
        go first as JSON, then one ``all_sum`` per array with zeros from the other ranks."""
        if not self.active:
            return arrays
        spec = self.broadcast_json([[k, list(v.shape), str(v.dtype).split(".")[-1]] for k, v in arrays.items()])
        out = {}
        for key, shape, dtype in spec:
            if self.is_main:
                x = arrays[key]
            else:
                x = mx.zeros(shape, dtype=getattr(mx, dtype))
            out[key] = self.sum(x)
        mx.eval(out)
        return out

    # ------------------------------------------------------------- agreement
    def raise_if_any(self, error: BaseException | None) -> None:
        """Every rank learns whether any rank failed; each then raises (its own error, or
        the first failing rank's message as a TrainerError)."""
        if not self.active:
            if error is not None:
                raise error
            return
        from tui_trainer.errors import one_line

        messages = self.gather_json(None if error is None else one_line(error))
        failed = [(r, msg) for r, msg in enumerate(messages) if msg is not None]
        if not failed:
            return
        if self.is_main:
            if error is not None:
                raise error
            r, msg = failed[0]
            raise TrainerError(f"rank {r}: {msg}")
        raise ReportedByRank0(f"rank {failed[0][0]}: {failed[0][1]}")

    def check_same(self, what: str, fingerprint: dict) -> None:
        """ConfigError on every rank unless ``fingerprint`` (JSON-able) is the same on all of them."""
        if not self.active:
            return
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
        digests = self.gather_json(digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            message = (f"rank(s) {', '.join(map(str, differ))} have another {what} than rank 0; "
                       "every rank needs the same config, model and data")
            raise ConfigError(message) if self.is_main else ReportedByRank0(message)


def _end_process(message: str) -> None:
    """The watchdog's way out: one line, then exit at once (no clean-up: the engine is stuck)."""
    sys.stdout.flush()
    print(f"tui-trainer: error: {message}", file=sys.stderr, flush=True)
    os._exit(RANK_TIMEOUT_EXIT)
