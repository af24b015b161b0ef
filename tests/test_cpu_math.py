"""engine/cpu_math.py: exp through exp2 equals MLX's exp, and the ops built on it (SwiGLU,
softmax, log-sum-exp, attention) equal MLX's own, values and gradients, to float32 rounding."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.activations import swiglu as mlx_swiglu

from tui_trainer.engine import cpu_math
from tui_trainer.engine.models import load_policy

EPS = 2.0 ** -23  # float32 machine epsilon


def close(a: mx.array, b: mx.array, scale: float = 1.0) -> None:
    """Equal to float32 rounding: a few hundred ulps of the values' magnitude (the same sums and
    products in another order / with another exp of equal accuracy)."""
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    tol = 256 * EPS * max(scale, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= tol, (np.abs(a - b).max(), tol)


def test_exp_is_as_exact_as_mlx():
    x = mx.concatenate([mx.random.uniform(-87, 88, (20000,), key=mx.random.key(0)),
                        mx.array([0.0, 1.0, -1.0, 88.0, -87.0, 1e-8])])
    ref = np.exp(np.array(x, dtype=np.float64))
    ours = np.array(cpu_math.exp(x), dtype=np.float64)
    theirs = np.array(mx.exp(x), dtype=np.float64)
    # both form y = x log2(e) in float32 first (log2(e) rounded, then the product: up to an ulp of
    # y), so the relative error is <= |y| 2^-23 ln 2 + a few ulps of the result
    bound = (np.abs(np.array(x, dtype=np.float64)) * 1.4427 * 2.0 ** -23 * np.log(2) + 4 * EPS) * ref
    assert np.all(np.abs(ours - ref) <= bound)
    assert (np.abs(ours - ref) / ref).max() <= (np.abs(theirs - ref) / ref).max() + EPS  # no worse than MLX's exp
    assert cpu_math.exp(mx.array([-1000.0])).item() == 0.0 and cpu_math.exp(mx.array([1000.0])).item() == float("inf")


def test_swiglu_values_and_gradients():
    g = mx.random.normal((3, 7, 40), key=mx.random.key(1)) * 4
    u = mx.random.normal((3, 7, 40), key=mx.random.key(2))
    w = mx.random.normal((3, 7, 40), key=mx.random.key(3))
    close(cpu_math.swiglu(g, u), mlx_swiglu(g, u))
    ours = mx.grad(lambda g, u: (cpu_math.swiglu(g, u) * w).sum(), argnums=(0, 1))(g, u)
    theirs = mx.grad(lambda g, u: (mlx_swiglu(g, u) * w).sum(), argnums=(0, 1))(g, u)
    for a, b in zip(ours, theirs):
        close(a, b)
    # far tails: silu(-100) = -0 and silu(100) = 100, no NaN
    tails = cpu_math.swiglu(mx.array([-100.0, 100.0]), mx.array([1.0, 1.0]))
    assert tails.tolist() == pytest.approx([0.0, 100.0])


def test_softmax_and_logsumexp_values_and_gradients():
    z = mx.random.normal((5, 6, 300), key=mx.random.key(4)) * 6
    c = mx.random.normal((5, 6, 300), key=mx.random.key(5))
    close(cpu_math.softmax(z), mx.softmax(z, axis=-1))
    close(mx.grad(lambda z: (cpu_math.softmax(z) * c).sum())(z), mx.grad(lambda z: (mx.softmax(z, axis=-1) * c).sum())(z))
    d = c[..., 0]
    close(cpu_math.logsumexp(z), mx.logsumexp(z, axis=-1), scale=40.0)
    close(mx.grad(lambda z: (cpu_math.logsumexp(z) * d).sum())(z),
          mx.grad(lambda z: (mx.logsumexp(z, axis=-1) * d).sum())(z))


def _masks(B, L, S):
    pad = mx.array([[True] * S, [False] * 2 + [True] * (S - 2)])[:B, None, None, :]
    causal = mx.arange(S - L, S)[:, None] >= mx.arange(S)[None]
    boolean = mx.logical_and(pad, causal)  # row 1's first query sees nothing: a fully masked row
    return {"none": None, "causal": "causal", "bool": boolean, "additive": mx.where(boolean, 0.0, -1e9)}


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("L", [5, 1])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "additive"])
def test_attention_equals_mx_fast(heads, kv_heads, L, mask_kind):
    B, S, D = 2, 5, 8
    keys = [mx.random.key(i) for i in range(10, 14)]
    q = mx.random.normal((B, heads, L, D), key=keys[0])
    k = mx.random.normal((B, kv_heads, S, D), key=keys[1])
    v = mx.random.normal((B, kv_heads, S, D), key=keys[2])
    w = mx.random.normal((B, heads, L, D), key=keys[3])
    mask = _masks(B, L, S)[mask_kind]

    def ours(q, k, v):
        return (cpu_math.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask) * w).sum()

    def theirs(q, k, v):
        return (mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask) * w).sum()

    close(cpu_math.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask),
          mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask))
    for a, b in zip(mx.grad(ours, argnums=(0, 1, 2))(q, k, v), mx.grad(theirs, argnums=(0, 1, 2))(q, k, v)):
        close(a, b)


def test_off_switch_gives_mlx_own_ops(monkeypatch):
    monkeypatch.setenv("TUI_TRAINER_CPU_MATH", "off")
    z = mx.random.normal((4, 50), key=mx.random.key(6))
    assert mx.array_equal(cpu_math.exp(z), mx.exp(z))
    assert mx.array_equal(cpu_math.logsumexp(z), mx.logsumexp(z, axis=-1))
    assert mx.array_equal(cpu_math.swiglu(z, z), mlx_swiglu(z, z))


def test_installed_model_equals_mlx_lm_forward_and_gradients(tiny_dir, monkeypatch):
    model, _ = load_policy(str(tiny_dir))  # load_policy installs the CPU ops
    assert cpu_math.install(model) == 0  # done already: nothing replaced twice
    import mlx_lm.models.llama as llama

    assert llama.swiglu is cpu_math.swiglu and llama.scaled_dot_product_attention is cpu_math.scaled_dot_product_attention
    tokens = mx.array([[5, 9, 14, 3, 22, 7], [8, 8, 31, 2, 11, 19]])

    def loss(m):
        return (m(tokens) ** 2).mean()

    lg = nn.value_and_grad(model, loss)
    model.unfreeze()
    value_ours, grads_ours = lg(model)
    logits_ours = model(tokens)
    monkeypatch.setenv("TUI_TRAINER_CPU_MATH", "off")  # each op hands back to mlx-lm's own
    value_mlx, grads_mlx = lg(model)
    close(model(tokens), logits_ours)
    close(value_ours, value_mlx)
    for (name, a), (_, b) in zip(tree_flatten(grads_ours), tree_flatten(grads_mlx)):
        close(a, b)
