"""The contract between the engine and its front ends.

The engine reports everything through one callable, ``observer(event)``, with
the event types below. The Textual app, the headless CLI and the metrics.jsonl
writer are three observers of that stream. Nothing here imports MLX or Textual.

A human judge asks through a ``JudgeRequest``: the engine thread blocks on
``request.future`` and the front end resolves it with a ``Verdict`` (pairwise)
or a float rating (pointwise).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Choice = Literal["a", "b", "tie", "skip"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of a pairwise comparison; ``confidence`` in [0, 1] when known.
    (Judges return it; ``from tui_trainer.plugins import Verdict``.)"""

    choice: Choice
    confidence: float | None = None

    def __post_init__(self) -> None:
        if self.choice not in ("a", "b", "tie", "skip"):
            raise ValueError(f"verdict must be a, b, tie or skip, got {self.choice!r}")


__all__ = [
    "StepMetrics", "Progress", "Sample", "JudgeRequest", "RunState", "LogMessage", "CheckpointSaved",
    "Event", "Observer", "Verdict", "fan_out",
]


@dataclass
class StepMetrics:
    """One PPO step's metrics, flat keys (the same dict goes to metrics.jsonl)."""

    step: int
    values: dict[str, float]

    def as_record(self) -> dict[str, Any]:
        return {"step": self.step, **self.values}


PHASES = ("rollout", "judging", "reference", "update", "evaluation")


@dataclass
class Progress:
    """Where the step in flight is: ``phase`` (one of PHASES), ``done`` of ``total`` ``unit``.

    Before step 1 the run reports ``phase="loading"`` with ``step=0`` (model, adapter, prompts,
    judges: 4 parts, ``detail`` says which is under way).

    rollout: tokens generated of the most the batch can generate (``rate``: generation tok/s);
    judging: samples judged (``detail`` names the judge); reference: minibatches of the
    reference / value pass; update: minibatches over all epochs (``detail``: "epoch e/E,
    minibatch m/M"); evaluation (only on ``eval_every`` steps): tokens generated for the fixed
    evaluation prompts, then their judging. ``elapsed`` is the step's time so far; ``eta`` the seconds it still needs,
    estimated from the previous step's phases (None until one step has finished).
    """

    step: int
    phase: str
    done: int
    total: int
    unit: str
    rate: float | None = None
    detail: str = ""
    elapsed: float = 0.0
    eta: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass
class Sample:
    """One prompt/completion pair from a rollout, with its judged score."""

    step: int
    prompt: str
    completion: str
    score: float | None
    scores: dict[str, float] = field(default_factory=dict)  # per judge
    finished: bool = True  # ended with EOS


@dataclass
class JudgeRequest:
    """A question for a person. ``kind`` is 'pairwise' (a vs b) or 'pointwise' (rate a)."""

    kind: Literal["pairwise", "pointwise"]
    prompt: str
    a: str
    b: str | None = None
    judge: str = "human"
    step: int = 0
    scale: tuple[int, int] = (0, 9)
    future: Future = field(default_factory=Future)
    created: float = field(default_factory=time.time)


@dataclass
class RunState:
    """Where the run stands. status: starting, running, paused, stopping, stopped, finished, failed."""

    status: str
    step: int = 0
    total_steps: int = 0
    run_dir: str = ""
    message: str = ""


@dataclass
class LogMessage:
    level: Literal["info", "warning", "error"]
    message: str
    time: float = field(default_factory=time.time)


@dataclass
class CheckpointSaved:
    step: int
    path: str


Event = StepMetrics | Progress | Sample | JudgeRequest | RunState | LogMessage | CheckpointSaved | list
Observer = Callable[[Any], None]


def fan_out(*observers: Observer | None) -> Observer:
    """One observer that forwards every event to each of ``observers`` in order."""
    live = [o for o in observers if o is not None]

    def emit(event: Any) -> None:
        for obs in live:
            obs(event)

    return emit
