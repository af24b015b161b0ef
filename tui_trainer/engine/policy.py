"""The trainable policy: base model + adapter + value head, and its batched forward.

``forward`` runs a full left-padded batch with the same RoPE offsets and padding
mask as the KV-cached rollout (engine/family.py: ``Positions`` stands in for the
cache, logits come through the model's own output path), so the log-probs it
recomputes equal the rollout's. The reference is the same model
with its adapter switched off (``adapter_off``): no second copy in memory.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from tui_trainer.config import AdapterConfig
from tui_trainer.engine import cpu_math, ppo
from tui_trainer.engine.family import Positions, backbone_of, check, output_logits, positions
from tui_trainer.errors import ConfigError

# every adapter layer mlx-lm makes (LoRASwitchLinear: the experts of a mixture-of-experts block)
ADAPTER_TYPES = (LoRALinear, DoRALinear, LoRASwitchLinear, LoRAEmbedding, DoRAEmbedding)


class _Hold:
    """Keeps a value out of nn.Module's parameter tree (Modules adopt dicts and arrays)."""

    def __init__(self, value):
        self.value = value


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b on the policy's last hidden state; zero-initialised."""

    def __init__(self, dims: int):
        super().__init__()
        self.linear = nn.Linear(dims, 1)
        self.linear.weight = mx.zeros_like(self.linear.weight)
        self.linear.bias = mx.zeros_like(self.linear.bias)

    def __call__(self, hidden: mx.array) -> mx.array:
        return self.linear(hidden)[..., 0]


class Policy(nn.Module):
    """The trainable bundle. Trainable leaves: adapter weights (or all, for full) + value head."""

    def __init__(self, model: nn.Module, adapter: AdapterConfig):
        super().__init__()
        self.model = model
        self.adapter_type = adapter.type
        cpu_math.install(model)  # on the CPU: exp through exp2 in SwiGLU and attention (engine/cpu_math.py)
        check(model)  # a family our batched forward cannot reproduce is refused here, before training
        model.freeze()
        n_layers = len(model.layers)
        num = n_layers if adapter.layers < 0 else min(adapter.layers, n_layers)
        keys = block_module_keys(model, adapter.keys)
        if adapter.type in ("lora", "dora"):
            params = {"rank": adapter.rank, "scale": adapter.scale, "dropout": adapter.dropout}
            if keys:
                params["keys"] = keys
            linear_to_lora_layers(model, num, params, use_dora=adapter.type == "dora")
            self.adapter_layers = num
        elif adapter.type == "full":
            model.unfreeze()
            self.adapter_layers = n_layers
            # the reference for full fine-tuning: the initial weights (arrays are immutable,
            # so keeping the references costs nothing until the optimizer replaces them)
            self._frozen = _Hold(model.parameters())
        else:
            raise ValueError(f"unknown adapter type {adapter.type!r}")
        backbone = backbone_of(model)
        dims = backbone.embed_tokens.weight.shape[-1]
        if hasattr(model, "args") and getattr(model.args, "hidden_size", None):
            dims = model.args.hidden_size
        self.value_head = ValueHead(dims)
        self.prefix_layers = frozen_prefix_layers(model, self.adapter_layers, adapter.type)
        self._prefix = _Hold(FrozenPrefix(self.prefix_layers))
        model.eval()  # no dropout in PPO
        lora = {"rank": adapter.rank, "scale": adapter.scale, "dropout": adapter.dropout}
        if keys:
            lora["keys"] = keys
        self._lora = _Hold(lora)

    @property
    def frozen_prefix(self) -> "FrozenPrefix":
        """The cache of the frozen leading blocks' output for the batch being trained on."""
        return self._prefix.value

    @property
    def lora_parameters(self) -> dict:
        return self._lora.value

    def adapter_weights(self) -> dict[str, mx.array]:
        """The adapter's tensors in mlx-lm's naming (what adapters.safetensors holds)."""
        return dict(tree_flatten(self.model.trainable_parameters()))

    def value_head_weights(self) -> dict[str, mx.array]:
        return dict(tree_flatten(self.value_head.parameters()))


def block_module_keys(model: nn.Module, keys: list[str] | None) -> list[str] | None:
    """``adapter.keys`` as mlx-lm's names inside a block. PEFT's short names (``q_proj``, from TRL's
    ``lora_target_modules``) become every module of that name (``self_attn.q_proj``); PEFT's
    ``all-linear`` is mlx-lm's default (None). A name that matches nothing is a ConfigError."""
    if not keys or list(keys) == ["all-linear"]:
        return None
    names = sorted({name for layer in model.layers for name, m in layer.named_modules()
                    if isinstance(m, (nn.Linear, nn.QuantizedLinear, nn.Embedding, nn.QuantizedEmbedding))
                    or hasattr(m, "to_lora")})
    out: list[str] = []
    for key in keys:
        found = [key] if key in names else [n for n in names if n.rsplit(".", 1)[-1] == key]
        if not found:
            raise ConfigError(f"adapter.keys: {key!r} names no linear module of the model's blocks "
                              f"(they are: {', '.join(names)})")
        out += [n for n in found if n not in out]
    return out


@contextmanager
def adapter_off(policy: Policy):
    """Run the base model: adapted layers swapped for their base layers (LoRA/DoRA),
    or the initial weights restored (full fine-tuning); put back on exit."""
    model = policy.model
    if policy.adapter_type == "full":
        current = model.parameters()
        model.update(policy._frozen.value)
        try:
            yield model
        finally:
            model.update(current)
        return
    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)]
    base = [(name, m.linear if hasattr(m, "linear") else m.embedding) for name, m in adapted]
    model.update_modules(tree_unflatten(base))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(adapted))


@contextmanager
def adapter_fused(policy: Policy):
    """Run the adapted model with each LoRA layer over a float32 base folded into one linear,
    W + scale (A B)^T (mlx-lm's ``LoRALinear.fuse``), for sampling: one matmul a layer instead
    of the base's, two rank-r ones, a scale and an add (decoding 16 rows of SmolLM2 on 2 cores:
    ~10% of a token's time). Same outputs up to float32 rounding (at step 0, B = 0: the base's
    own weights). The fused weights live until exit (one more copy of the adapted matrices, made
    only where it fits ``fused_budget()``). Quantized and 16-bit bases (their rounding would move
    the sampled log-probs off the update's), DoRA and full fine-tuning run as they are. Put back
    on exit."""
    model = policy.model
    adapted = [(name, m) for name, m in model.named_modules()
               if type(m) is LoRALinear and type(m.linear) is nn.Linear and m.linear.weight.dtype == mx.float32]
    if not adapted or sum(m.linear.weight.nbytes for _, m in adapted) > fused_budget():
        yield model
        return
    fused = [(name, m.fuse()) for name, m in adapted]
    model.update_modules(tree_unflatten(fused))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(adapted))
        del fused
        mx.clear_cache()  # their buffers back to the system, not kept by MLX for arrays of other sizes


def fused_budget() -> int:
    """Bytes the fused copy of the adapted matrices may take: a quarter of the memory available
    now (Linux's MemAvailable; elsewhere a quarter of the physical memory), so a large model's
    rollout never runs short of memory for a saving of ~10% (SmolLM2-135M: 424 MB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 0


def frozen_prefix_layers(model: nn.Module, adapter_layers: int, adapter_type: str) -> int:
    """How many leading blocks carry no adapter, when the model allows running them apart.

    With LoRA on the last k of n blocks, blocks 0..n-k-1 are frozen and identical for the
    policy and its reference: their output is computed once per step and reused by the
    reference pass, the value pass and every PPO minibatch (and no gradient goes through
    them). Only for mlx-lm's llama family, whose blocks take (h, mask, cache).
    """
    from mlx_lm.models.llama import LlamaModel

    backbone = backbone_of(model)
    if adapter_type == "full" or type(backbone) is not LlamaModel:
        return 0
    if getattr(backbone, "swa_idx", None) is not None:
        return 0
    return max(0, len(backbone.layers) - adapter_layers)


def prefix_hidden(model: nn.Module, tokens: mx.array, left_pad: mx.array, n_layers: int) -> mx.array:
    """Output of the first ``n_layers`` blocks for ``tokens[:, :-1]`` (no gradient)."""
    backbone = backbone_of(model)
    pos = Positions(left_pad)
    h = backbone.embed_tokens(tokens[:, :-1])
    mask = pos.make_mask(h.shape[1])
    for layer in backbone.layers[:n_layers]:
        h = layer(h, mask, cache=pos)
    return mx.stop_gradient(h)


class FrozenPrefix:
    """The output of the leading blocks that carry no adapter, for one rollout batch.

    Those blocks are identical for the policy and its reference, so their output is computed
    once per step (``fill``) and reused by the reference pass, the value pass and every PPO
    minibatch (``rows``); no gradient goes through it. With no such blocks (``n_layers`` 0:
    full fine-tuning, adapters on every block, a model family that cannot run blocks apart)
    ``rows`` gives None and the forward runs from the embeddings.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._batch: tuple | None = None

    def fill(self, model: nn.Module, roll, chunks: list[list[int]], lanes) -> None:
        """Compute the prefix of every row of ``roll`` (a Rollout), ``chunks`` rows at a time, each
        chunk's rows split over ``lanes`` (engine/lanes.py)."""
        self._batch = None
        if not self.n_layers:
            return
        parts = []
        for idx in chunks:
            for stream, part in lanes.split(idx):
                with mx.stream(stream):
                    parts.append(prefix_hidden(model, roll.tokens[mx.array(part)], roll.left_pad[mx.array(part)],
                                               self.n_layers))
        hidden = mx.concatenate(parts)
        mx.eval(hidden)
        self._batch = (hidden, roll.left_pad, roll.prompt_width, roll.lengths)

    def rows(self, idx: list[int]) -> tuple[int, mx.array] | None:
        """``(n_layers, hidden)`` for rows ``idx``, with the columns ``trim_rows`` keeps; None without a prefix."""
        if self._batch is None:
            return None
        hidden, left_pad, prompt_width, lengths = self._batch
        cut = int(left_pad[mx.array(idx)].min().item())
        return self.n_layers, hidden[mx.array(idx), cut:prompt_width + max(1, max(lengths[i] for i in idx)) - 1]

    def clear(self) -> None:
        self._batch = None


def hidden_states(model: nn.Module, tokens: mx.array, left_pad: mx.array, prompt_width: int,
                  prefix: tuple[int, mx.array] | None = None) -> mx.array:
    """Last hidden states at the response positions of a left-padded batch.

    Position t reads the state at column prompt_width - 1 + t, the one that predicts
    response token t. ``prefix = (k, h)`` starts from the output ``h`` of the first k
    blocks (see prefix_hidden).
    """
    backbone = backbone_of(model)
    if prefix is None or prefix[0] == 0:
        return backbone(tokens[:, :-1], cache=positions(model, left_pad))[:, prompt_width - 1:]
    k, h = prefix
    pos = Positions(left_pad)
    mask = pos.make_mask(h.shape[1])
    for layer in backbone.layers[k:]:
        h = layer(h, mask, cache=pos)
    return backbone.norm(h)[:, prompt_width - 1:]


def forward(model: nn.Module, tokens: mx.array, left_pad: mx.array, prompt_width: int,
            prefix: tuple[int, mx.array] | None = None):
    """(hidden, logits) at the response positions: logits[:, t] scores tokens[:, prompt_width + t]."""
    hidden = hidden_states(model, tokens, left_pad, prompt_width, prefix)
    return hidden, output_logits(model, hidden).astype(mx.float32)


def token_logprobs(logits: mx.array, targets: mx.array, temperature: float) -> tuple[mx.array, mx.array]:
    """(log pi(target) at logits / T, logits / T). T = 0 (greedy) uses T = 1.

    log pi(target) = z_target - logsumexp(z) with z = logits / T: the taken token's logit minus
    the normaliser, so no (B, T, V) array of log-probs is built (nor its gradient)."""
    scaled = logits / temperature if temperature > 0 and temperature != 1 else logits
    picked = mx.take_along_axis(scaled, targets[..., None], axis=-1)[..., 0]
    return picked - cpu_math.logsumexp(scaled), scaled


def evaluate(policy: Policy, tokens: mx.array, left_pad: mx.array, prompt_width: int, temperature: float,
             with_values: bool = True, with_entropy: bool = False, entropy_grad: bool = False,
             prefix: tuple[int, mx.array] | None = None):
    """Log-probs of the response tokens (+ values, + entropy) under the current policy.

    The entropy is a reported statistic unless ``entropy_grad`` (an entropy bonus in the loss).
    """
    hidden, logits = forward(policy.model, tokens, left_pad, prompt_width, prefix)
    targets = tokens[:, prompt_width:]
    logp, scaled = token_logprobs(logits, targets, temperature)
    # the critic is a linear probe on the policy's features: no value-loss gradient into the adapter,
    # so the critic's fit never moves the policy (the adapter learns from the policy loss alone)
    values = policy.value_head(mx.stop_gradient(hidden).astype(mx.float32)) if with_values else None
    entropy = None
    if with_entropy:
        entropy = ppo.entropy_from_logits(scaled if entropy_grad else mx.stop_gradient(scaled))
    return logp, values, entropy


def reference_logprobs(policy: Policy, tokens, left_pad, prompt_width, temperature, reference=None,
                       prefix: tuple[int, mx.array] | None = None):
    """Reference log-probs: a separate reference model if given, else the policy with its adapter off."""
    if reference is not None:
        _, logits = forward(reference, tokens, left_pad, prompt_width)
        return token_logprobs(logits, tokens[:, prompt_width:], temperature)[0]
    with adapter_off(policy) as base:
        _, logits = forward(base, tokens, left_pad, prompt_width, prefix)
        return token_logprobs(logits, tokens[:, prompt_width:], temperature)[0]
