"""What each mode fits: its advantages (and returns), and the terms it adds to the loss.

The trainer's update is the same for every mode (rollout -> reference -> targets -> epochs
of clipped-surrogate minibatches); an :class:`Objective` supplies the part that differs:

* ``ppo`` (and ``pairwise`` with the ppo objective, whose scores are verdict rewards):
  per-token rewards = score on the last token - beta x KL_t, GAE with the value head,
  whitened advantages; the value head is trained with the clipped value loss.
* ``rloo``: the sequence reward score - beta x KL is compared with the mean of the other
  samples of its prompt (REINFORCE leave-one-out); no critic.
* ``grpo``: the score is normalised within its prompt's group; the KL to the reference is a
  loss term, beta x k3 (DeepSeekMath); no critic.
* ``studio`` / ``studio_sigmoid`` (``pairwise`` with an MLX-LoRA-Studio objective): each
  decided pair gives its winner +A and its loser -A from the rollout's log-probs
  (ppo.studio_advantages); ties and skips leave the update; KL as a k3 loss term.

Each rank holds its share of the step's rows (whole prompt groups, whole pairs); statistics
over the batch go through ``Batch.allsum``.

Adding a mode adds a class here and one line in :func:`objective_for`. Formulas live in
ppo.py; this file only chooses them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from tui_trainer.config import Config
from tui_trainer.engine import ppo


@dataclass
class Batch:
    """A step's rollout as the objectives see it (rows = completions, columns = response tokens)."""

    scores: mx.array  # shaped scores (0 where dropped)
    raw_scores: list[float | None]  # as the judges gave them (None = dropped)
    keep: mx.array  # 1 for a row that takes part in the update
    mask: mx.array  # response tokens of the kept rows
    response_mask: mx.array  # response tokens of every row
    logp_old: mx.array  # log pi_old (sampling time)
    logp_ref: mx.array  # log pi_ref
    kl_seq: mx.array  # the configured KL estimator, summed over each row
    beta: float
    values_old: mx.array | None = None  # the value head's V(s_t), when the objective has a critic
    # a statistic summed over the ranks (distributed.Ranks.sum): every mean, variance and whitening
    # is over the global batch, so the targets equal the one-process targets
    allsum: Callable[[mx.array], mx.array] = lambda x: x


@dataclass
class Targets:
    """What the minibatches fit: per-token advantages (+ returns and old values for a critic)."""

    advantages: mx.array
    returns: mx.array | None = None
    values_old: mx.array | None = None
    stats: dict[str, float] = field(default_factory=dict)


class Objective(ABC):
    """The policy gradient is always ppo.policy_loss (the clipped surrogate) on ``advantages``."""

    name = "base"
    critic = False  # uses the value head: its values feed GAE and it is trained (value loss)
    kl_in_loss = False  # beta x k3 KL to the reference is a loss term (else the KL is in the reward)

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def rows(self, raw_scores: list[float | None], keep: mx.array) -> mx.array:
        """Which rows take part (1) given the judges' scores; default: every row with a score."""
        return keep

    @abstractmethod
    def targets(self, b: Batch) -> Targets:
        """Advantages (and returns) for the update, with their statistics."""


def _mean_over_kept(x: mx.array, b: Batch) -> float:
    return float(b.allsum((x * b.keep).sum()).item() / max(b.allsum(b.keep.sum()).item(), 1.0))


class PPO(Objective):
    name = "ppo"
    critic = True

    def targets(self, b: Batch) -> Targets:
        cfg = self.cfg
        rewards, non_score = ppo.compute_rewards(b.scores, b.logp_old, b.logp_ref, b.mask, b.beta, cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards = ppo.whiten(rewards, b.mask, shift_mean=False, allsum=b.allsum)
        advantages, returns = ppo.gae(rewards, b.values_old, b.mask, cfg.gamma, cfg.lam)
        # whitening divides by the advantages' spread: when there is none (every score and
        # value the same), it would blow float noise up into a full-size Adam step
        if float(ppo.masked_var(advantages, b.mask, allsum=b.allsum).item()) > 1e-12:
            advantages = ppo.whiten(advantages, b.mask, allsum=b.allsum)
        else:
            advantages = mx.zeros_like(advantages)
        n, reward_sum, non_score_sum = b.allsum(mx.stack([b.keep.sum(), rewards.sum(), non_score.sum()])).tolist()
        n = max(n, 1.0)
        stats = {"reward_mean": float(reward_sum / n), "non_score_reward": float(non_score_sum / n)}
        return Targets(advantages, returns, b.values_old, stats)


class GroupBaseline(Objective):
    """rloo / grpo: one advantage per completion from the other completions of its prompt."""

    def targets(self, b: Batch) -> Targets:
        seq = self.sequence_reward(b)
        adv_seq = ppo.group_advantages(seq, self.cfg.num_samples, self.name, b.keep)
        stats = {"reward_mean": _mean_over_kept(seq, b), "non_score_reward": -b.beta * _mean_over_kept(b.kl_seq, b)}
        return Targets(adv_seq[:, None] * b.mask, stats=stats)

    def sequence_reward(self, b: Batch) -> mx.array:
        return b.scores


class RLOO(GroupBaseline):
    name = "rloo"

    def sequence_reward(self, b: Batch) -> mx.array:
        return b.scores - b.beta * b.kl_seq  # the KL is part of the reward


class GRPO(GroupBaseline):
    name = "grpo"
    kl_in_loss = True


class Studio(Objective):
    """Pairwise with MLX-LoRA-Studio's objective: sequence advantages of each decided pair."""

    kl_in_loss = True

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.name = cfg.pairwise_objective

    def rows(self, raw_scores: list[float | None], keep: mx.array) -> mx.array:
        # a tie or a skipped pair carries no preference: both rows leave the update
        raw = mx.array([math.nan if x is None else float(x) for x in raw_scores], dtype=mx.float32)
        self._first_won, self._decided = ppo.pair_winners(raw)
        return keep * mx.repeat(self._decided, 2)

    def targets(self, b: Batch) -> Targets:
        seq_lp = (b.logp_old * b.response_mask).sum(axis=1)
        lengths = b.response_mask.sum(axis=1)
        adv_seq = ppo.studio_advantages(seq_lp, lengths, self._first_won, self._decided, self.name, b.allsum)
        kl3 = (ppo.kl_k3(b.logp_old, b.logp_ref) * b.mask).sum(axis=1)
        stats = {"reward_mean": _mean_over_kept(b.scores, b), "non_score_reward": -b.beta * _mean_over_kept(kl3, b)}
        return Targets(adv_seq[:, None] * b.mask, stats=stats)


def objective_for(cfg: Config) -> Objective:
    """The objective of ``cfg.mode`` (and ``cfg.pairwise_objective`` in pairwise mode)."""
    if cfg.mode == "pairwise" and cfg.pairwise_objective != "ppo":
        return Studio(cfg)
    return {"ppo": PPO, "pairwise": PPO, "rloo": RLOO, "grpo": GRPO}[cfg.mode](cfg)
