"""Human + reward model, online: a reward model that learns from a person's answers while PPO runs.

Each step the person answers only a small budget of questions: the pairs of completions (of the
same prompt) where the current reward model is least sure, ``|P(a > b) - 0.5|`` smallest with
``P(a > b) = sigma(r_a - r_b)`` (:func:`least_sure_pairs`). Every answer (a / b; ties and skips
teach nothing) becomes a preference pair; every ``refit_every`` new pairs the reward model is
refitted from scratch on all pairs so far with ``reward_train.train_reward_model`` (on the
calling thread: the engine's), and it scores every sample for PPO.

What is reported (:meth:`OnlineReward.metrics`):

* ``labels``: the preference pairs so far;
* ``heldout_accuracy``: the last refit's accuracy on its held-out share of those pairs;
* ``agreement``: over the last ``window`` answered questions, the share where the reward model
  (as it was when the question was asked, before the answer could teach it) preferred the
  completion the person chose. An unsure model (P = 0.5, e.g. before the first fit) counts as
  disagreeing.

Before the first refit every reward is 0 (no preference), so PPO gets no signal until the person
has answered ``refit_every`` questions.
"""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from tui_trainer.config import RewardTrainConfig
from tui_trainer.engine import reward as R
from tui_trainer.engine.reward_train import train_reward_model
from tui_trainer.preferences import Pair


def least_sure_pairs(prompts: Sequence[Any], completions: Sequence[str], rewards: Sequence[float],
                     budget: int) -> list[tuple[int, int]]:
    """Up to ``budget`` pairs ``(i, j)``, ``i < j``, of samples with the same prompt and different
    completions, ordered by ``|sigma(r_i - r_j) - 0.5|`` ascending (the least sure first); equal ones keep
    index order. Each sample is asked about at most once per call, so a budget of 2 asks about
    4 different completions."""
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    candidates = []
    for idx in groups.values():
        for i, j in itertools.combinations(idx, 2):
            if completions[i] == completions[j]:
                continue
            candidates.append((abs(R.preference_probability(rewards[i], rewards[j]) - 0.5), i, j))
    candidates.sort()
    chosen: list[tuple[int, int]] = []
    used: set[int] = set()
    for _, i, j in candidates:
        if len(chosen) >= budget:
            break
        if i in used or j in used:
            continue
        chosen.append((i, j))
        used.update((i, j))
    return chosen


class OnlineReward:
    """The reward model of the online loop: its pairs so far, the current model, its metrics.

    ``cfg``: how each refit trains (``reward train``'s settings; ``cfg.model`` is the base, a
    fresh copy of it is loaded for each refit); ``out_dir``: where each refit writes the
    reward-model directory (replaced each time)."""

    def __init__(self, cfg: RewardTrainConfig, out_dir: str | Path, *, refit_every: int = 4, window: int = 20,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.refit_every = refit_every
        self.pairs: list[Pair] = []
        self.new = 0  # pairs since the last refit
        self.scorer: R.RewardScorer | None = None
        self.heldout_accuracy: float | None = None
        self.agreed: deque[bool] = deque(maxlen=window)
        self.refits = 0
        self.log = log or (lambda message: None)

    def rewards(self, prompts: Sequence[Any], completions: Sequence[str], normalised: bool = False) -> list[float]:
        """The current model's rewards; 0 for all before the first refit."""
        if self.scorer is None:
            return [0.0] * len(completions)
        return self.scorer.rewards(prompts, completions, normalised=normalised)

    def add(self, pair: Pair, p_chosen: float) -> None:
        """A person's answer: ``pair.chosen`` preferred; ``p_chosen`` = the model's P(chosen > rejected)
        when the question was asked."""
        self.pairs.append(pair)
        self.new += 1
        self.agreed.append(p_chosen > 0.5)

    @property
    def refit_due(self) -> bool:
        return self.new >= self.refit_every

    def refit(self, observer: Callable[[Any], None] | None = None) -> dict:
        """Train a new reward model on every pair so far (from scratch) and score with it."""
        from tui_trainer.engine.models import load_policy

        summary = train_reward_model(self.cfg, list(self.pairs), self.out_dir, observer=observer,
                                     loaded=load_policy(self.cfg.model))
        self.scorer = R.RewardScorer(*R.load_reward_model(self.out_dir, loaded=load_policy(self.cfg.model)))
        self.new = 0
        self.refits += 1
        final = summary.get("final") or {}
        self.heldout_accuracy = final.get("eval_accuracy", self.heldout_accuracy)
        shown = "n/a" if self.heldout_accuracy is None else f"{self.heldout_accuracy:.2f}"
        self.log(f"reward model refitted on {len(self.pairs)} label(s) (held-out accuracy {shown})")
        return summary

    def metrics(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "labels": float(len(self.pairs)),
            "heldout_accuracy": nan if self.heldout_accuracy is None else float(self.heldout_accuracy),
            "agreement": sum(self.agreed) / len(self.agreed) if self.agreed else nan,
        }
