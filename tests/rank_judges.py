"""Rules callables for the data-parallel tests (tests/test_distributed.py): a rank that is slow, and
a rank that dies. Both score like test_trainer.char_length; each rank runs its own copy."""

from __future__ import annotations

import os
import signal
import time

SLOW_SECONDS = 0.75  # per sample, on rank 1
SCORED = [0]  # samples this process has scored


def slow_on_rank_1(prompt: str, completion: str) -> float:
    """Rank 1 takes SLOW_SECONDS a sample; the others none."""
    if os.environ.get("MLX_RANK") == "1":
        time.sleep(SLOW_SECONDS)
    return len(completion) / 20


def dies_on_rank_1_in_step_2(prompt: str, completion: str) -> float:
    """Rank 1 is killed (SIGKILL: no clean-up, no last words) at its first sample of step 2, with
    a batch of 4 prompts x 2 samples over 2 ranks (4 samples a rank and step)."""
    SCORED[0] += 1
    if os.environ.get("MLX_RANK") == "1" and SCORED[0] > 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return len(completion) / 20


def hangs_on_rank_1_in_step_2(prompt: str, completion: str) -> float:
    """Rank 1 hangs (alive, but never answers) at its first sample of step 2: only a time limit
    tells the others (judge_timeout set longer than rank_timeout)."""
    SCORED[0] += 1
    if os.environ.get("MLX_RANK") == "1" and SCORED[0] > 4:
        time.sleep(3600)
    return len(completion) / 20
