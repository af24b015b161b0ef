"""PPO for language models: the formulas, one function each, no state.

Shapes: ``(N, R)`` arrays hold one row per sequence and one column per response
token; ``mask`` is 1.0 on real response tokens (EOS included) and 0.0 on padding.
Names follow TRL and "The N Implementation Details of RLHF with PPO".

Data-parallel runs (engine/distributed.py): ``allsum`` sums a statistic over the ranks, so a
mean / variance / whitening is over the global batch; ``count`` gives a loss its global
normaliser, so the ranks' losses add up to the one-process loss.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from tui_trainer.engine import cpu_math

Sum = Callable[[mx.array], mx.array]  # a batch sum over the ranks (distributed.Ranks.sum); None: this process


def masked_mean(x: mx.array, mask: mx.array, axis=None, *, count: mx.array | None = None,
                allsum: Sum | None = None) -> mx.array:
    """sum(x * mask) / sum(mask) (over ``axis``, or everything); ``count`` replaces sum(mask);
    ``allsum``: both sums over the ranks."""
    total = (x * mask).sum(axis=axis)
    n = mask.sum(axis=axis) if count is None else count
    if allsum is not None:
        total = allsum(total)
        n = allsum(n) if count is None else n  # a given count is global already
    return total / mx.maximum(n, 1e-8)


def masked_var(x: mx.array, mask: mx.array, unbiased: bool = True, allsum: Sum | None = None) -> mx.array:
    """Variance of x over mask: mean((x - mean)^2), times n/(n-1) when unbiased."""
    mean = masked_mean(x, mask, allsum=allsum)
    var = masked_mean((x - mean) ** 2, mask, allsum=allsum)
    if unbiased:
        n = mask.sum() if allsum is None else allsum(mask.sum())
        var = var * n / mx.maximum(n - 1, 1.0)
    return var


def whiten(x: mx.array, mask: mx.array, shift_mean: bool = True, allsum: Sum | None = None) -> mx.array:
    """(x - mean) / sqrt(var + 1e-8) over masked entries; the mean is added back when not shift_mean."""
    mean, var = masked_mean(x, mask, allsum=allsum), masked_var(x, mask, allsum=allsum)
    out = (x - mean) * mx.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_k1(logp: mx.array, logp_ref: mx.array) -> mx.array:
    """k1 = log pi(a|s) - log pi_ref(a|s): unbiased per-token KL estimate, used in the reward."""
    return logp - logp_ref


def kl_k3(logp: mx.array, logp_ref: mx.array) -> mx.array:
    """k3 = exp(-d) - 1 + d with d = logp - logp_ref: non-negative, low-variance KL estimate."""
    d = logp - logp_ref
    return mx.exp(-d) - 1.0 + d


def last_token_index(mask: mx.array) -> mx.array:
    """Column of the last real response token of each row (lengths - 1, at least 0)."""
    return mx.maximum(mask.sum(axis=1).astype(mx.int32) - 1, 0)


def compute_rewards(scores: mx.array, logp_old: mx.array, logp_ref: mx.array, mask: mx.array,
                    beta: float, estimator: str = "k1") -> tuple[mx.array, mx.array]:
    """Per-token rewards: r_t = -beta * KL_t on every response token, plus the score on the last one.

    KL_t is k1 (the default, as in TRL) or k3 (``estimator="k3"``).
    Returns ``(rewards, non_score_reward)``, where non_score_reward = -beta * KL_t * mask.
    """
    kl = kl_k3(logp_old, logp_ref) if estimator == "k3" else kl_k1(logp_old, logp_ref)
    non_score = -beta * kl * mask
    last = last_token_index(mask)
    cols = mx.arange(mask.shape[1])[None, :]
    at_last = (cols == last[:, None]).astype(mask.dtype) * (mask.sum(axis=1, keepdims=True) > 0)
    return non_score + at_last * scores[:, None], non_score


def gae(rewards: mx.array, values: mx.array, mask: mx.array, gamma: float, lam: float
        ) -> tuple[mx.array, mx.array]:
    """Generalised advantage estimation over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the last token);
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Padding gives 0.
    """
    rewards, values = rewards * mask, values * mask
    n, length = rewards.shape
    last = mx.zeros((n,), dtype=rewards.dtype)
    advs = []
    for t in reversed(range(length)):
        next_v = values[:, t + 1] if t + 1 < length else mx.zeros((n,), dtype=values.dtype)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advs.append(last)
    advantages = mx.stack(advs[::-1], axis=1)
    return advantages, (advantages + values) * mask


def adaptive_kl_beta(beta: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """Ziegler et al.: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""
    err = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + err * n_steps / horizon)


def policy_loss(logp: mx.array, logp_old: mx.array, advantages: mx.array, mask: mx.array,
                epsilon: float, count: mx.array | None = None) -> tuple[mx.array, dict[str, mx.array]]:
    """Clipped surrogate: mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps))), r = exp(logp - logp_old).

    Stats (response tokens only): clip_fraction = share of tokens where the clipped
    term is the larger loss; approx_kl = 0.5 * mean((logp - logp_old)^2); ratio mean.
    """
    diff = logp - logp_old
    ratio = mx.exp(diff)
    pg1 = -advantages * ratio
    pg2 = -advantages * mx.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    loss = masked_mean(mx.maximum(pg1, pg2), mask, count=count)
    stats = {
        "clip_fraction": masked_mean((pg2 > pg1).astype(mx.float32), mask, count=count),
        "approx_kl": 0.5 * masked_mean(diff * diff, mask, count=count),
        "ratio": masked_mean(ratio, mask, count=count),
    }
    return loss, stats


def value_loss(values: mx.array, values_old: mx.array, returns: mx.array, mask: mx.array,
               clip: float, count: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)).

    Returns ``(loss, value_clip_fraction)``.
    """
    clipped = values_old + mx.clip(values - values_old, -clip, clip)
    l1 = (values - returns) ** 2
    l2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(mx.maximum(l1, l2), mask, count=count)
    return loss, masked_mean((l2 > l1).astype(mx.float32), mask, count=count)


def entropy_from_logits(logits: mx.array) -> mx.array:
    """H = logsumexp(z) - sum(softmax(z) * z), per position."""
    lse = cpu_math.logsumexp(logits)
    return lse - (cpu_math.exp(logits - lse[..., None]) * logits).sum(axis=-1)


def explained_variance(values: mx.array, returns: mx.array, mask: mx.array, allsum: Sum | None = None) -> mx.array:
    """1 - Var(returns - values) / Var(returns) over response tokens."""
    var_r = masked_var(returns, mask, allsum=allsum)
    return 1.0 - masked_var(returns - values, mask, allsum=allsum) / mx.maximum(var_r, 1e-8)


def group_advantages(scores: mx.array, group_size: int, kind: str, keep: mx.array | None = None) -> mx.array:
    """Critic-free advantages from groups of ``group_size`` samples of one prompt.

    Over the kept samples of a group (``keep`` 1/0 per row; a dropped score is no sample):
    rloo: A_i = s_i - mean_{j != i, kept} s_j (leave-one-out baseline);
    grpo: A_i = (s_i - mean(s)) / (std(s) + 1e-4).
    Dropped samples, and groups with fewer than two kept samples, get A = 0.
    """
    g = scores.reshape(-1, group_size)
    k = mx.ones_like(g) if keep is None else keep.reshape(-1, group_size).astype(g.dtype)
    n = k.sum(axis=1, keepdims=True)
    enough = (n >= 2).astype(g.dtype) * k
    total = (g * k).sum(axis=1, keepdims=True)
    if kind == "rloo":
        if group_size < 2:
            raise ValueError("rloo needs num_samples >= 2")
        baseline = (total - g) / mx.maximum(n - 1, 1)
        adv = g - baseline
    elif kind == "grpo":
        mean = total / mx.maximum(n, 1)
        std = mx.sqrt((k * (g - mean) ** 2).sum(axis=1, keepdims=True) / mx.maximum(n, 1))
        adv = (g - mean) / (std + 1e-4)
    else:
        raise ValueError(f"unknown group baseline {kind!r}")
    return (adv * enough).reshape(-1)


def verdict_rewards(choices: list[str], win: float = 1.0, lose: float = -1.0, tie: float = 0.0
                    ) -> list[tuple[float, float] | None]:
    """Pairwise verdicts -> (reward of a, reward of b); 'skip' gives None (the pair is dropped)."""
    table = {"a": (win, lose), "b": (lose, win), "tie": (tie, tie)}
    return [table.get(c) for c in choices]


def pair_winners(scores: mx.array) -> tuple[mx.array, mx.array]:
    """Rows (2i, 2i+1) are one pair. Returns (first_won, decided), each (P,) of 1/0.

    A tie (equal scores) or a skipped pair (a dropped score, given as NaN) is undecided: it
    carries no preference, so it must give no signal either way.
    """
    a, b = scores[0::2], scores[1::2]
    decided = mx.logical_and(mx.logical_not(mx.isnan(a) | mx.isnan(b)), a != b)
    return (a > b).astype(mx.float32) * decided, decided.astype(mx.float32)


def studio_advantages(seq_logp_old: mx.array, lengths: mx.array, first_won: mx.array, decided: mx.array,
                      variant: str = "studio", allsum: Sum | None = None) -> mx.array:
    """Per-sequence advantages of the MLX-LoRA-Studio pairwise objective, shape (2P,).

    ``seq_logp_old`` is each sequence's summed log-prob under the rollout policy (a constant);
    with c / r the chosen and rejected row of a decided pair:

    studio (as documented):  A = log pi(y_c) - log pi(y_r);  A_norm = (A - mean) / (std + 1e-8)
                             over the decided pairs (0 when they have no spread); the chosen row gets A_norm,
                             the rejected -A_norm.
    studio_sigmoid:          A = sigmoid(-(log pi(y_c) / |y_c| - log pi(y_r) / |y_r|)) (the gap of
                             length-normalised log-probs): always the verdict's sign, large while the
                             policy still prefers the loser (the first version's form).
    Undecided pairs (tie, skip) get 0.
    """
    sign = 2.0 * first_won - 1.0  # +1: row 2i is the chosen one
    if variant == "studio_sigmoid":
        seq_logp_old = seq_logp_old / mx.maximum(lengths, 1.0)
    gap = sign * (seq_logp_old[0::2] - seq_logp_old[1::2])  # log pi(chosen) - log pi(rejected)
    if variant == "studio":
        total = (lambda x: x) if allsum is None else allsum  # over the decided pairs of every rank
        n = mx.maximum(total(decided.sum()), 1.0)
        mean = total((gap * decided).sum()) / n
        std = mx.sqrt(total(((gap - mean) ** 2 * decided).sum()) / n)
        # no spread (one decided pair, or equal gaps): exactly 0, not float noise / 1e-8
        a = mx.where(std > 1e-6, (gap - mean) / (std + 1e-8), 0.0)
    elif variant == "studio_sigmoid":
        a = mx.sigmoid(-gap)
    else:
        raise ValueError(f"unknown studio variant {variant!r}")
    a = a * decided
    return mx.stack([sign * a, -sign * a], axis=1).reshape(-1)
