"""Any mlx-lm text model, exact: the batched forward and caches our PPO needs, built from the
model's own parts, and the check that a model family reproduces its own output through them.

PPO needs the log-probs of the sampled tokens twice: at sampling time (the rollout decodes a
left-padded batch with KV caches) and in the update (one full-sequence forward of the same
padded batch, with gradients). Both must equal what the model computes for each row alone, or
the ratio is not 1 at step 0 and the "reference" is not the base model. So nothing here is a
second implementation of a model:

- the rollout's caches are the model's own ``make_cache()`` (plain and sliding-window layers),
  turned into mlx-lm's batch caches (``BatchKVCache`` / ``BatchRotatingKVCache``), as mlx-lm's
  batch generation does;
- in the full forward, ``Positions`` stands in for each layer's cache: it gives row i the RoPE
  offset ``-left_pad[i]`` and mlx-lm's own causal mask (``create_causal_mask``, sliding windows
  included) with the padding hidden;
- logits come from the hidden states through the model's own output path (``output_logits``:
  the model's ``__call__`` with its backbone's work already done), so soft-capping (gemma2),
  logit scaling (cohere, granite) and tied heads are the model's own.

``check(model)`` runs once when a policy is built, on a few tokens: a padded batch, both ways,
must reproduce each row run alone through the model's own forward. A family that does not (a
recurrent layer, a cache that cannot be batched, an output path that reads its inputs) is
refused with one line naming it, never trained wrong.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import BatchKVCache, BatchRotatingKVCache, KVCache, RotatingKVCache, make_prompt_cache

from tui_trainer.errors import ModelError

# set on a model by check(): its attention wants masks with a grouped-query axis (B, 1, 1, L, S)
_GROUPED = "_tui_trainer_grouped_mask"


def family(model: nn.Module) -> str:
    """The model's family name (mlx-lm's ``model_type``), for messages."""
    args = getattr(model, "args", None)
    return str(getattr(args, "model_type", None) or getattr(model, "model_type", None) or type(model).__module__)


def backbone_of(model: nn.Module) -> nn.Module:
    """The model's backbone: ``backbone(tokens, cache=...)`` -> last hidden states (final norm applied)."""
    backbone = getattr(model, "model", None)
    if not isinstance(backbone, nn.Module) or not hasattr(backbone, "layers"):
        raise ModelError(f"model family {family(model)}: no .model backbone with layers; not supported "
                         "(tui-trainer trains mlx-lm causal language models)")
    return backbone


def _grouped_masks(cache, grouped: bool):
    """Give ``cache`` masks with a grouped-query axis: mlx-lm's gemma2 reshapes its scores to
    (B, kv_heads, repeats, L, S) and cannot broadcast a (B, 1, L, S) padding mask against them."""
    if grouped:
        make = cache.make_mask

        def make_mask(*args, **kwargs):
            mask = make(*args, **kwargs)
            return mask[:, :, None] if isinstance(mask, mx.array) and mask.ndim == 4 else mask

        cache.make_mask = make_mask
    return cache


def _grouped(model: nn.Module) -> bool:
    """Whether the model wants grouped-query masks; a model not seen before is checked first."""
    if not hasattr(model, _GROUPED):
        check(model)
    return getattr(model, _GROUPED)


class Positions:
    """A stand-in for a KV cache in a full-sequence forward of left-padded rows.

    Gives row i the RoPE offset ``-left_pad[i]`` (its first real token at position 0) and a
    causal mask (sliding window if the layer asks) that hides the padding, exactly like
    mlx-lm's batch caches in a prefill.
    """

    def __init__(self, left_pad: mx.array):
        self.left_pad = left_pad
        self.offset = -left_pad

    def update_and_fetch(self, keys, values):
        return keys, values

    def make_mask(self, n: int, return_array: bool = False, window_size=None):
        return create_causal_mask(n, 0, window_size=window_size, left_padding=self.left_pad)


def positions(model: nn.Module, left_pad: mx.array) -> list[Positions]:
    """One ``Positions`` per layer of the backbone, for a full forward of a left-padded batch."""
    grouped = _grouped(model)
    return [_grouped_masks(Positions(left_pad), grouped) for _ in backbone_of(model).layers]


def batch_caches(model: nn.Module, pads: mx.array) -> list:
    """The model's own caches (``make_cache()``) as mlx-lm batch caches for left-padded rows."""
    pad_list = [int(p) for p in pads.tolist()]
    grouped = _grouped(model)
    out = []
    for cache in make_prompt_cache(model):
        if type(cache) is KVCache:
            batched = BatchKVCache(pad_list)
        elif type(cache) is RotatingKVCache and cache.keep == 0:
            batched = BatchRotatingKVCache(cache.max_size, pad_list)
        else:
            raise ModelError(f"model family {family(model)}: its {type(cache).__name__} layers cannot decode a "
                             "padded batch; not supported (plain and sliding-window attention are)")
        out.append(_grouped_masks(batched, grouped))
    return out


class _GivenHidden(nn.Module):
    """Stands in for a model's backbone: returns hidden states computed already; every other
    attribute (``embed_tokens`` for a tied head, ``args``) is the real backbone's."""

    def __init__(self, backbone: nn.Module, hidden: mx.array):
        super().__init__()
        self.__dict__["_backbone"] = backbone
        self.__dict__["_hidden"] = hidden

    def __getattr__(self, name):
        return getattr(self.__dict__["_backbone"], name)

    def __call__(self, *args, **kwargs):
        return self.__dict__["_hidden"]


def output_logits(model: nn.Module, hidden: mx.array) -> mx.array:
    """The model's own logits for last hidden states ``hidden`` (B, T, D): its ``__call__`` runs
    with the backbone's output given, so the head, soft-capping and scaling are the model's."""
    backbone = backbone_of(model)
    model.model = _GivenHidden(backbone, hidden)
    try:
        return model(mx.zeros(hidden.shape[:2], dtype=mx.int32))
    finally:
        model.model = backbone


def padded_forward(model: nn.Module, tokens: mx.array, left_pad: mx.array) -> mx.array:
    """Last hidden states of a left-padded batch (B, L, D), every row as if it ran alone."""
    return backbone_of(model)(tokens, cache=positions(model, left_pad))


def _probe_rows(vocab: int) -> list[list[int]]:
    """Two short rows of different lengths: the shorter one is left-padded in the batch."""
    ids = [(7 * i + 3) % vocab for i in range(1, 6)]
    return [ids[:4], ids[2:4]]


def _max_diff(a: mx.array, b: mx.array) -> float:
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item())


def check(model: nn.Module) -> None:
    """Refuse (ModelError, one line) a model whose padded batch does not reproduce its own
    forward of each row alone: through ``Positions`` + ``output_logits`` (the update) and
    through ``batch_caches`` (the rollout's prefill and one decode step). Also decides whether
    the family wants grouped-query masks. A few tokens; once per model."""
    try:
        _check(model)
    except ModelError:
        model.__dict__.pop(_GROUPED, None)  # checked again (and refused again) at the next use
        raise


def _check(model: nn.Module) -> None:
    name = family(model)
    backbone = backbone_of(model)
    vocab = backbone.embed_tokens.weight.shape[0] if hasattr(backbone, "embed_tokens") else 64
    rows = _probe_rows(vocab)
    width = max(len(r) for r in rows)
    pads = mx.array([width - len(r) for r in rows], dtype=mx.int32)
    tokens = mx.array([[0] * (width - len(r)) + r for r in rows], dtype=mx.int32)
    try:
        alone = [model(mx.array([r], dtype=mx.int32))[0].astype(mx.float32) for r in rows]
    except Exception as exc:  # noqa: BLE001  a model that cannot run at all
        raise ModelError(f"model family {name}: its forward failed on a probe ({type(exc).__name__}: {exc})") from None
    scale = max(1.0, max(float(mx.abs(a).max().item()) for a in alone))
    tol = 1e-3 * scale  # float32 rounding is ~1e-6 of the logits; a wrong mask or head is O(1)

    # masks as mlx-lm makes them first; grouped-query masks if the attention needs them (gemma2:
    # there a (B, 1, L, S) mask fails to broadcast, or, when B equals the kv heads, silently
    # masks the wrong rows, so only a comparison with the rows alone can tell)
    failure = ""
    for grouped in (False, True):
        setattr(model, _GROUPED, grouped)
        try:
            ours = output_logits(model, padded_forward(model, tokens, pads)).astype(mx.float32)
        except ValueError as exc:
            failure = f"its attention cannot take a padded batch ({exc})"
            continue
        worst = max(_max_diff(ours[i, width - len(r):], alone[i]) for i, r in enumerate(rows))
        if worst <= tol:
            break
        failure = f"a padded batch does not reproduce the model's own forward (logits differ by {worst:.3g})"
    else:
        raise ModelError(f"model family {name}: {failure}; not supported")
    caches = batch_caches(model, pads)
    model(tokens[:, :-1], cache=caches)
    last = model(tokens[:, -1:], cache=caches)[:, 0].astype(mx.float32)
    worst = max(_max_diff(last[i], alone[i][-1]) for i in range(len(rows)))
    if worst > tol:
        raise ModelError(f"model family {name}: batched decoding does not reproduce the model's own forward "
                         f"(logits differ by {worst:.3g}); not supported")
