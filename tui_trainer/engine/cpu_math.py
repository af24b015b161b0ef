"""exp, and what is built on it, at 2.7x MLX's own speed on an x86 CPU.

MLX's CPU ``exp`` (and ``sigmoid``, ``softmax``, ``logsumexp``, which use it) is Cephes'
polynomial with ``fma``, and the x86 wheel is built for the baseline x86-64 where ``fma`` is
a libm call per multiply-add: ~12 ns per element. ``power(2, x)`` goes through libm's
``exp2f`` instead: ~4.4 ns, and equally exact (both round x log2(e) first: max relative error
3.9e-6 on [-87, 88], 9.7e-7 on [-20, 0], the same as MLX's exp, tests/test_cpu_math.py).
With the PPO update's minibatches split over lanes (engine/lanes.py), exp was ~20% of the
update's CPU time (perf: simd::exp + __fmaf_fma3), SwiGLU's sigmoid and attention's softmax
most of it (4 x 113 tokens: SwiGLU forward 11.4 -> 3.9 ms, forward + backward 14.9 -> 8.3 ms
per block; attention softmax 7.0 -> 5.0 ms).

    exp(x) = 2 ** (x log2 e)
    swiglu(g, u) = silu(g) u = g u / (1 + exp(-g))
    softmax(z) = exp(z - m) / sum exp(z - m),  m = max z (no gradient: it cancels)
    logsumexp(z) = m + log sum exp(z - m)

All plain MLX ops, differentiated by MLX itself. ``scaled_dot_product_attention`` is mx.fast's
CPU fallback (the same grouped-query layout and masks) with this softmax; ``install(model)``
points the model's mlx-lm modules at it and at ``swiglu`` (their module globals). Each hands
its arguments to MLX's own function where it does not pay or apply: on a GPU (MLX's kernels
are fast there), for dtypes other than float32, for attention sinks or a quantized KV cache,
or with ``TUI_TRAINER_CPU_MATH=off``.
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx
from mlx_lm.models.activations import swiglu as _mlx_swiglu
from mlx_lm.models.base import scaled_dot_product_attention as _mlx_sdpa

_DEFINING = ("mlx_lm.models.activations", "mlx_lm.models.base")  # where the originals live: never replaced
_LOG2E = 1.4426950408889634
_TWO = mx.array(2.0, dtype=mx.float32)
_LOWEST = float(mx.finfo(mx.float32).min)


def enabled() -> bool:
    """Whether these are used: the CPU is MLX's device and ``TUI_TRAINER_CPU_MATH`` is not off."""
    if os.environ.get("TUI_TRAINER_CPU_MATH", "").strip().lower() in ("0", "off", "false", "no"):
        return False
    return mx.default_device() == mx.cpu


def _applies(*arrays: mx.array) -> bool:
    return enabled() and all(a.dtype == mx.float32 for a in arrays)


def exp(x: mx.array) -> mx.array:
    """exp(x) = 2 ** (x log2 e)."""
    return mx.power(_TWO, x * _LOG2E) if _applies(x) else mx.exp(x)


@mx.custom_function
def _swiglu(gate: mx.array, up: mx.array) -> mx.array:
    return gate * up / (1.0 + exp(-gate))


@_swiglu.vjp
def _swiglu_vjp(primals, cotangent, output):
    """d gate = c u s (1 + g (1 - s)), d up = c g s, s = sigmoid(g): recomputed from g, so the
    backward keeps only gate and up (autodiff of the formula kept three more arrays)."""
    gate, up = primals
    s = 1.0 / (1.0 + exp(-gate))
    cs = cotangent * s
    return cs * up * (1.0 + gate * (1.0 - s)), cs * gate


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up (mlx-lm's ``swiglu``) = gate * up / (1 + exp(-gate))."""
    if gate.shape == up.shape and _applies(gate, up):
        return _swiglu(gate, up)
    return _mlx_swiglu(gate, up)


@mx.custom_function
def _softmax(z: mx.array) -> mx.array:
    e = exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@_softmax.vjp
def _softmax_vjp(primals, cotangent, output):
    """d z = P (c - sum(c P)): from the output alone."""
    d = cotangent * output
    return d - output * d.sum(axis=-1, keepdims=True)


def softmax(z: mx.array) -> mx.array:
    """Softmax over the last axis."""
    return _softmax(z) if _applies(z) else mx.softmax(z, axis=-1, precise=True)


@mx.custom_function
def _logsumexp(z: mx.array) -> mx.array:
    m = z.max(axis=-1, keepdims=True)
    return mx.log(exp(z - m).sum(axis=-1)) + m[..., 0]


@_logsumexp.vjp
def _logsumexp_vjp(primals, cotangent, output):
    """d z = c exp(z - logsumexp z), recomputed: no (rows, vocabulary) array kept for the backward."""
    return cotangent[..., None] * exp(primals - output[..., None])  # one input: primals is that array


def logsumexp(z: mx.array) -> mx.array:
    """log sum exp over the last axis."""
    return _logsumexp(z) if _applies(z) else mx.logsumexp(z, axis=-1)


def scaled_dot_product_attention(queries, keys, values, cache=None, scale: float = 1.0, mask=None, sinks=None):
    """mlx-lm's ``scaled_dot_product_attention``: mx.fast's CPU fallback with ``softmax`` above.

    softmax(scale * q @ k^T, masked) @ v, queries (B, H, L, D), keys / values (B, H_kv, S, D),
    H a multiple of H_kv (grouped-query: each kv head serves H / H_kv query heads); ``mask``
    None, "causal" (the last L of S positions) or an array (boolean: where attention may look,
    float32's lowest score elsewhere, as MLX does; float: added to the scores)."""
    if (sinks is not None or hasattr(cache, "bits") or not _applies(queries, keys, values)
            or (isinstance(mask, mx.array) and mask.ndim > 4)):
        return _mlx_sdpa(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
    B, H, L, D = queries.shape
    H_kv, S = keys.shape[1], keys.shape[2]
    rep = H // H_kv
    q = queries * mx.array(scale, dtype=queries.dtype)
    if rep > 1:
        q = q.reshape(B, H_kv, rep, L, D)
        keys, values = keys[:, :, None], values[:, :, None]
    scores = q @ keys.swapaxes(-1, -2)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask mode {mask!r}")
        mask = mx.arange(S - L, S)[:, None] >= mx.arange(S)[None]
    if mask is not None:
        if rep > 1 and mask.ndim >= 3:  # the head axis of a mask splits as the queries' did
            if mask.shape[-3] == 1:
                mask = mx.expand_dims(mask, -3)
            else:
                mask = mx.broadcast_to(mask, (*mask.shape[:-3], H, L, S)).reshape(*mask.shape[:-3], H_kv, rep, L, S)
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(_LOWEST, scores.dtype))
        else:
            scores = scores + mask.astype(scores.dtype)
    out = softmax(scores) @ values
    return out.reshape(B, H, L, -1) if rep > 1 else out


def install(model) -> int:
    """Point the mlx-lm modules that define ``model``'s blocks at ``swiglu`` and
    ``scaled_dot_product_attention`` here (their module globals; each hands anything it does
    not apply to back to mlx-lm's own function). Returns how many module globals were
    replaced (0 when done already)."""
    originals = {"swiglu": (_mlx_swiglu, swiglu),
                 "scaled_dot_product_attention": (_mlx_sdpa, scaled_dot_product_attention)}
    done = 0
    for name in {type(m).__module__ for _, m in model.named_modules()}:
        module = sys.modules.get(name)
        if module is None or not name.startswith("mlx_lm.models.") or name in _DEFINING:
            continue
        for attr, (original, ours) in originals.items():
            if getattr(module, attr, None) is original:
                setattr(module, attr, ours)
                done += 1
    return done
