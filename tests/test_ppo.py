"""Unit tests for the PPO formulas in tui_trainer/engine/ppo.py.

Every expected value is worked out by hand (written as a constant with its arithmetic in a
comment) or by a plain-Python loop in this file, never by calling the function under test.
Padding entries carry large junk values so that any leak of padding into a result shows up.
"""

from __future__ import annotations

import math

import mlx.core as mx
import pytest

from tui_trainer.engine import ppo

TOL = 1e-5


def close(actual, expected, tol=TOL):
    """Compare an mx.array / float / nested list to a Python number or nested list."""
    if isinstance(actual, mx.array):
        actual = actual.tolist()
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected), (actual, expected)
        for a, e in zip(actual, expected):
            close(a, e, tol)
    else:
        assert math.isclose(actual, expected, rel_tol=tol, abs_tol=tol), (actual, expected)


def real_entries(x, mask):
    return [v for row, mrow in zip(x, mask) for v, m in zip(row, mrow) if m]


def py_mean(xs):
    return sum(xs) / len(xs)


def py_var(xs, unbiased=True):
    mu = py_mean(xs)
    ss = sum((v - mu) ** 2 for v in xs)
    return ss / (len(xs) - 1) if unbiased else ss / len(xs)


# ---------------------------------------------------------------- masked statistics

X = [[1.0, 2.0, 100.0], [4.0, -50.0, 300.0]]
M = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_masked_mean_ignores_padding():
    x, m = mx.array(X), mx.array(M)
    close(ppo.masked_mean(x, m), 7.0 / 3.0)  # (1 + 2 + 4) / 3
    close(ppo.masked_mean(x, m, axis=1), [1.5, 4.0])  # (1 + 2) / 2, 4 / 1


def test_masked_mean_all_padding_row_is_zero_not_nan():
    x, m = mx.array([[5.0, 6.0], [1.0, 3.0]]), mx.array([[0.0, 0.0], [1.0, 1.0]])
    close(ppo.masked_mean(x, m, axis=1), [0.0, 2.0])


def test_masked_var_ignores_padding():
    x, m = mx.array(X), mx.array(M)
    # entries 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 14/3
    close(ppo.masked_var(x, m, unbiased=False), 14.0 / 9.0)
    close(ppo.masked_var(x, m, unbiased=True), 7.0 / 3.0)  # 14/3 / (3 - 1)
    close(ppo.masked_var(x, m), py_var([1.0, 2.0, 4.0]))  # unbiased is the default


# ---------------------------------------------------------------- whitening

WX = [[1.0, 2.0, 3.0, 99.0], [4.0, 6.0, -77.0, 55.0]]
WM = [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]


def test_whiten_zero_mean_unit_variance_padding_zero():
    out = ppo.whiten(mx.array(WX), mx.array(WM)).tolist()
    real = real_entries(WX, WM)  # 1, 2, 3, 4, 6: mean 16/5, unbiased var 14.8/4 = 3.7
    mu, sd = py_mean(real), math.sqrt(py_var(real))
    assert math.isclose(mu, 3.2) and math.isclose(py_var(real), 3.7)
    for row, xrow, mrow in zip(out, WX, WM):
        for o, v, m in zip(row, xrow, mrow):
            close(o, (v - mu) / sd if m else 0.0)
    white = real_entries(out, WM)
    close(py_mean(white), 0.0)
    close(py_var(white), 1.0)


def test_whiten_without_shift_keeps_mean():
    out = ppo.whiten(mx.array(WX), mx.array(WM), shift_mean=False).tolist()
    real = real_entries(WX, WM)
    mu, sd = py_mean(real), math.sqrt(py_var(real))
    for row, xrow, mrow in zip(out, WX, WM):
        for o, v, m in zip(row, xrow, mrow):
            close(o, (v - mu) / sd + mu if m else 0.0)
    white = real_entries(out, WM)
    close(py_mean(white), 3.2)
    close(py_var(white), 1.0)


# ---------------------------------------------------------------- KL estimators

def test_kl_k1_is_log_ratio():
    logp = mx.array([[-1.0, -0.5, -3.0]])
    ref = mx.array([[-1.5, -0.5, -1.0]])
    close(ppo.kl_k1(logp, ref), [[0.5, 0.0, -2.0]])


def test_kl_k3_hand_values_and_zero_at_equal():
    logp = mx.array([math.log(0.5), -1.0, -2.0, -2.0])
    ref = mx.array([math.log(0.25), 0.0, -2.0, -1.0])
    # d = ln 2: 1/2 - 1 + ln 2 = 0.19314718;  d = -1: e - 1 - 1 = 0.71828183;  d = 0: 0
    close(ppo.kl_k3(logp, ref), [0.5 - 1.0 + math.log(2.0), math.e - 2.0, 0.0, math.e - 2.0])


def test_kl_k3_non_negative():
    d = [i / 4.0 for i in range(-20, 21)]
    ref = mx.zeros((len(d),))
    k3 = ppo.kl_k3(mx.array(d), ref).tolist()
    assert min(k3) >= 0.0
    assert k3[20] == 0.0  # d = 0
    for v, di in zip(k3, d):
        close(v, math.exp(-di) - 1.0 + di, 1e-4)


# ---------------------------------------------------------------- rewards

RM = [[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]


def test_last_token_index():
    assert ppo.last_token_index(mx.array(RM)).tolist() == [2, 0, 0, 3]


def test_compute_rewards_score_on_last_real_token_kl_everywhere_nothing_on_padding():
    scores = [2.0, -1.0, 5.0, 0.5]
    logp = [[-1.0, -2.0, -0.5, -9.0], [-0.2, -4.0, -4.0, -4.0],
            [-1.0, -1.0, -1.0, -1.0], [-0.1, -0.2, -0.3, -0.4]]
    ref = [[-1.5, -1.0, -0.5, -1.0], [-0.7, -1.0, -2.0, -3.0],
           [-3.0, -3.0, -3.0, -3.0], [-0.1, -0.1, -0.1, -0.1]]
    beta = 0.1
    rewards, non_score = ppo.compute_rewards(mx.array(scores), mx.array(logp), mx.array(ref),
                                             mx.array(RM), beta)
    exp_r, exp_ns = [], []
    for s, lrow, rrow, mrow in zip(scores, logp, ref, RM):
        n = int(sum(mrow))
        ns = [(-beta * (lp - rp) if m else 0.0) for lp, rp, m in zip(lrow, rrow, mrow)]
        r = list(ns)
        if n > 0:
            r[n - 1] += s
        exp_r.append(r)
        exp_ns.append(ns)
    close(rewards, exp_r)
    close(non_score, exp_ns)
    # spot values by hand: row 0 = [-0.05, +0.1, 0 + 2.0, 0]; the empty row 2 gets nothing
    close(rewards[0], [-0.05, 0.1, 2.0, 0.0])
    close(rewards[1], [-0.1 * 0.5 - 1.0, 0.0, 0.0, 0.0])  # k1 = 0.5, score -1
    close(rewards[2], [0.0, 0.0, 0.0, 0.0])
    close(rewards[3], [0.0, 0.01, 0.02, 0.03 + 0.5])  # k1 = 0, -0.1, -0.2, -0.3


# ---------------------------------------------------------------- GAE

def gae_loop(rewards, values, mask, gamma, lam):
    advs, rets = [], []
    for r, v, m in zip(rewards, values, mask):
        n = int(sum(m))
        a = [0.0] * len(r)
        last = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * next_v - v[t]
            last = delta + gamma * lam * last
            a[t] = last
        advs.append(a)
        rets.append([a[t] + v[t] if t < n else 0.0 for t in range(len(r))])
    return advs, rets


def test_gae_1x3_by_hand():
    rewards, values, mask = [[1.0, 0.0, 2.0]], [[0.5, 1.0, -0.5]], [[1.0, 1.0, 1.0]]
    adv, ret = ppo.gae(mx.array(rewards), mx.array(values), mx.array(mask), 0.9, 0.8)
    # t=2: delta = 2 + 0 + 0.5 = 2.5                    A2 = 2.5
    # t=1: delta = 0 + 0.9 * -0.5 - 1 = -1.45          A1 = -1.45 + 0.72 * 2.5 = 0.35
    # t=0: delta = 1 + 0.9 * 1 - 0.5 = 1.4             A0 = 1.4 + 0.72 * 0.35 = 1.652
    close(adv, [[1.652, 0.35, 2.5]])
    close(ret, [[2.152, 1.35, 2.0]])
    loop_adv, loop_ret = gae_loop(rewards, values, mask, 0.9, 0.8)
    close(adv, loop_adv)
    close(ret, loop_ret)


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.8), (1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_2x4_with_padding_matches_loop(gamma, lam):
    rewards = [[0.1, -0.2, 0.3, 1.5], [0.4, 2.0, 7.0, 9.0]]  # 7, 9 are padding junk
    values = [[0.2, 0.4, -0.1, 0.6], [1.0, -0.5, 33.0, -44.0]]  # 33, -44 are padding junk
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    adv, ret = ppo.gae(mx.array(rewards), mx.array(values), mx.array(mask), gamma, lam)
    loop_adv, loop_ret = gae_loop(rewards, values, mask, gamma, lam)
    close(adv, loop_adv)
    close(ret, loop_ret)
    assert adv.tolist()[1][2:] == [0.0, 0.0] and ret.tolist()[1][2:] == [0.0, 0.0]
    # returns = advantages + values on real tokens
    close(ret.tolist()[0], [a + v for a, v in zip(adv.tolist()[0], values[0])])
    if (gamma, lam) == (0.9, 0.8):
        # row 1 by hand: t=1: delta = 2.0 - (-0.5) = 2.5 (V after the last token is 0, not 33)
        #                t=0: delta = 0.4 + 0.9 * -0.5 - 1.0 = -1.05; A0 = -1.05 + 0.72 * 2.5 = 0.75
        close(adv.tolist()[1], [0.75, 2.5, 0.0, 0.0])
    if (gamma, lam) == (1.0, 1.0):
        # gamma = lam = 1: A_t = sum of rewards from t on - V_t
        close(adv.tolist()[0], [1.7 - 0.2, 1.6 - 0.4, 1.8 + 0.1, 1.5 - 0.6])


# ---------------------------------------------------------------- adaptive KL

def test_adaptive_kl_beta_clips_both_ways_and_scales_with_n_over_horizon():
    beta, target, horizon = 0.1, 6.0, 10000
    # KL = 12: 12/6 - 1 = 1 -> clipped to 0.2: 0.1 * (1 + 0.2 * 256/10000) = 0.100512
    assert math.isclose(ppo.adaptive_kl_beta(beta, 12.0, target, 256, horizon), 0.100512)
    # KL = 0: -1 -> clipped to -0.2: 0.1 * (1 - 0.00512) = 0.099488
    assert math.isclose(ppo.adaptive_kl_beta(beta, 0.0, target, 256, horizon), 0.099488)
    # KL = 6.6: error 0.1 inside the clip: 0.1 * (1 + 0.1 * 0.0256) = 0.100256
    assert math.isclose(ppo.adaptive_kl_beta(beta, 6.6, target, 256, horizon), 0.100256)
    # KL on target: unchanged
    assert math.isclose(ppo.adaptive_kl_beta(beta, 6.0, target, 256, horizon), 0.1)
    # n = horizon: a full +-20% move; n = 2 * horizon doubles it
    assert math.isclose(ppo.adaptive_kl_beta(beta, 1e6, target, horizon, horizon), 0.12)
    assert math.isclose(ppo.adaptive_kl_beta(beta, 0.0, target, horizon, horizon), 0.08)
    assert math.isclose(ppo.adaptive_kl_beta(beta, 1e6, target, 2 * horizon, horizon), 0.14)


# ---------------------------------------------------------------- policy loss

def test_policy_loss_ratio_one():
    logp = mx.array([[-1.0, -2.0, -0.3, -5.0]])
    adv = mx.array([[1.0, -2.0, 3.0, 100.0]])  # last is padding
    mask = mx.array([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = ppo.policy_loss(logp, logp, adv, mask, 0.2)
    close(loss, -(1.0 - 2.0 + 3.0) / 3.0)  # -mean(A) over real tokens
    close(stats["clip_fraction"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(stats["ratio"], 1.0)


def _clip_case():
    ratios = [1.5, 1.5, 0.5, 0.5, 1.1, 3.0]
    advs = [1.0, -1.0, 1.0, -1.0, 2.0, 5.0]
    mask = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # last is padding (would be clipped)
    logp_old = [-1.0, -2.0, -0.5, -1.5, -3.0, -0.7]
    logp = [o + math.log(r) for o, r in zip(logp_old, ratios)]
    return ratios, advs, mask, logp_old, logp


def test_policy_loss_clipped_by_hand():
    ratios, advs, mask, logp_old, logp = _clip_case()
    loss, stats = ppo.policy_loss(mx.array([logp]), mx.array([logp_old]), mx.array([advs]),
                                  mx.array([mask]), 0.2)
    # A=+1, r=1.5: max(-1.5, -1.2) = -1.2  clipped
    # A=-1, r=1.5: max( 1.5,  1.2) =  1.5
    # A=+1, r=0.5: max(-0.5, -0.8) = -0.5
    # A=-1, r=0.5: max( 0.5,  0.8) =  0.8  clipped
    # A=+2, r=1.1: inside the range: -2.2
    close(loss, (-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5.0)  # -0.32
    close(stats["clip_fraction"], 2.0 / 5.0)
    close(stats["approx_kl"], 0.5 * py_mean([math.log(r) ** 2 for r in ratios[:5]]))
    close(stats["ratio"], (1.5 + 1.5 + 0.5 + 0.5 + 1.1) / 5.0)


def test_policy_loss_gradient_zero_on_clipped_tokens():
    ratios, advs, mask, logp_old, logp = _clip_case()
    old, a, m = mx.array([logp_old]), mx.array([advs]), mx.array([mask])
    grad = mx.grad(lambda lp: ppo.policy_loss(lp, old, a, m, 0.2)[0])(mx.array([logp])).tolist()[0]
    # d/dlogp of -A * r is -A * r / n on unclipped tokens; clipped tokens and padding give 0
    expected = [0.0, 1.5 / 5.0, -0.5 / 5.0, 0.0, -2.0 * 1.1 / 5.0, 0.0]
    close(grad, expected)


# ---------------------------------------------------------------- value loss

def test_value_loss_picks_max_branch_and_clip_fraction():
    values = [1.0, 0.1, -0.5, 2.0, 10.0]
    values_old = [0.0, 0.0, 0.0, 1.0, 0.0]
    returns = [1.0, 1.0, 1.0, 0.0, -10.0]
    mask = [1.0, 1.0, 1.0, 1.0, 0.0]
    loss, frac = ppo.value_loss(mx.array([values]), mx.array([values_old]), mx.array([returns]),
                                mx.array([mask]), 0.2)
    # tok1: clipped V = 0.2: max(0, 0.64) = 0.64  (clipped branch wins)
    # tok2: inside the range: 0.81 both
    # tok3: clipped V = -0.2: max(2.25, 1.44) = 2.25
    # tok4: clipped V = 1.2: max(4, 1.44) = 4
    close(loss, 0.5 * (0.64 + 0.81 + 2.25 + 4.0) / 4.0)  # 0.9625
    close(frac, 1.0 / 4.0)


# ---------------------------------------------------------------- entropy / explained variance

def test_entropy_from_logits():
    uniform = mx.full((2, 3, 7), 3.0)
    close(ppo.entropy_from_logits(uniform), [[math.log(7.0)] * 3] * 2)
    # p = [1/4, 3/4]: H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351
    two = mx.array([[0.0, math.log(3.0)]])
    close(ppo.entropy_from_logits(two), [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    peaked = mx.array([[0.0, 0.0, 50.0]])
    close(ppo.entropy_from_logits(peaked), [0.0], 1e-4)


def test_explained_variance():
    returns = mx.array([[1.0, 2.0, 3.0, 50.0]])
    mask = mx.array([[1.0, 1.0, 1.0, 0.0]])
    close(ppo.explained_variance(mx.array([[1.0, 2.0, 3.0, -9.0]]), returns, mask), 1.0)
    close(ppo.explained_variance(mx.array([[0.0, 1.0, 2.0, 0.0]]), returns, mask), 1.0)  # offset
    close(ppo.explained_variance(mx.zeros((1, 4)), returns, mask), 0.0)
    # residual [0, 0, 1]: var 1/3; var(returns) = 1 -> 1 - 1/3
    close(ppo.explained_variance(mx.array([[1.0, 2.0, 2.0, 7.0]]), returns, mask), 2.0 / 3.0)


# ---------------------------------------------------------------- group baselines

def test_group_advantages_rloo_leave_one_out():
    scores = [1.0, 2.0, 6.0, 0.0, 0.0, 3.0]
    adv = ppo.group_advantages(mx.array(scores), 3, "rloo")
    # group 1: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5
    # group 2: 0 - 1.5 = -1.5, -1.5, 3 - 0 = 3
    close(adv, [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_group_advantages_grpo_normalised():
    scores = [1.0, 2.0, 6.0, 4.0, 4.0, 4.0]
    adv = ppo.group_advantages(mx.array(scores), 3, "grpo").tolist()
    g = scores[:3]
    mu = py_mean(g)  # 3
    sd = math.sqrt(py_var(g, unbiased=False))  # sqrt(14/3)
    close(adv[:3], [(s - mu) / (sd + 1e-4) for s in g])
    close(py_mean(adv[:3]), 0.0)
    close(adv[3:], [0.0, 0.0, 0.0])  # equal scores in a group: no signal, no NaN


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="rloo"):
        ppo.group_advantages(mx.array([1.0, 2.0]), 1, "rloo")
    with pytest.raises(ValueError, match="unknown"):
        ppo.group_advantages(mx.array([1.0, 2.0]), 2, "ppo")


# ---------------------------------------------------------------- pairwise

def test_verdict_rewards():
    assert ppo.verdict_rewards(["a", "b", "tie", "skip"]) == [(1.0, -1.0), (-1.0, 1.0), (0.0, 0.0), None]
    assert ppo.verdict_rewards(["b", "tie", "a"], win=2.0, lose=-0.5, tie=0.25) == [
        (-0.5, 2.0), (0.25, 0.25), (2.0, -0.5)]


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_pair_winners_tie_and_skip_give_no_preference():
    """Bug: a tie (equal scores) counted as a win for the second sample."""
    first_won, decided = ppo.pair_winners(mx.array([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, math.nan, 1.0]))
    assert first_won.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert decided.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_studio_advantages_documented_form_by_hand():
    # pairs: (row0 won, gap = -3 - -5 = 2), (row3 won, gap = -4 - -2 = -2), (tie), (row6 won, gap 3)
    seq = mx.array([-3.0, -5.0, -2.0, -4.0, -1.0, -1.0, -2.0, -5.0])
    lengths = mx.array([3.0, 5.0, 2.0, 4.0, 1.0, 1.0, 2.0, 5.0])
    first_won, decided = ppo.pair_winners(mx.array([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 1.0, -1.0]))
    adv = ppo.studio_advantages(seq, lengths, first_won, decided, "studio").tolist()
    gaps = [2.0, -2.0, 3.0]  # A = log pi(y_c) - log pi(y_r) over the decided pairs
    mu = py_mean(gaps)
    sd = math.sqrt(py_var(gaps, unbiased=False))
    a = [(g - mu) / (sd + 1e-8) for g in gaps]
    close(adv, [a[0], -a[0], -a[1], a[1], 0.0, 0.0, a[2], -a[2]])


def test_studio_advantages_without_spread_are_zero():
    """Three pairs with the same gap (1.7): the float32 mean is off by one ulp, and dividing that by
    std + 1e-8 gave every chosen completion an advantage of -0.92. No spread, no signal."""
    seq = mx.array([-1.0, -2.7, -3.0, -4.7, -2.0, -3.7])
    first_won, decided = ppo.pair_winners(mx.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))
    adv = ppo.studio_advantages(seq, mx.ones((6,)), first_won, decided, "studio").tolist()
    assert adv == [0.0] * 6


def test_studio_sigmoid_variant_keeps_the_verdicts_sign():
    seq = mx.array([-3.0, -5.0, -2.0, -4.0])
    lengths = mx.array([3.0, 5.0, 2.0, 4.0])  # length-normalised: [-1, -1, -1, -1] -> gap 0
    first_won, decided = ppo.pair_winners(mx.array([1.0, 0.0, 0.0, 1.0]))
    adv = ppo.studio_advantages(seq, lengths, first_won, decided, "studio_sigmoid").tolist()
    close(adv, [0.5, -0.5, -0.5, 0.5])
    seq = mx.array([-1.0, -3.0, -1.0, -3.0])  # the policy already prefers row 0 (and row 2)
    adv = ppo.studio_advantages(seq, mx.ones((4,)), mx.array([1.0, 0.0]), mx.array([1.0, 1.0]),
                                "studio_sigmoid").tolist()
    close(adv, [_sigmoid(-2.0), -_sigmoid(-2.0), -_sigmoid(2.0), _sigmoid(2.0)])
    assert adv[3] > adv[0] > 0  # the pair the policy gets wrong weighs more


def test_group_advantages_leave_dropped_samples_out():
    """Bug: a dropped score entered the group baseline as 0."""
    scores = mx.array([1.0, 2.0, 0.0, 5.0, 0.0, 0.0])  # row 2 and rows 4-5 dropped (their 0 is no score)
    keep = mx.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    close(ppo.group_advantages(scores, 3, "rloo", keep), [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    grpo = ppo.group_advantages(scores, 3, "grpo", keep).tolist()
    close(grpo, [-0.5 / (0.5 + 1e-4), 0.5 / (0.5 + 1e-4), 0.0, 0.0, 0.0, 0.0])
