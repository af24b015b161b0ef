"""Reward models: the Bradley-Terry formulas, a scalar head on a causal LM, batched scoring,
and the reward-model directory that ``reward train`` writes and the ``reward`` judge reads.

The reward of a completion is ``r = w . h + b``: a linear head on the last hidden state
(final norm applied) of the last real token of ``[prompt, completion]``, formatted as a
conversation with the tokenizer's chat template (``[..., user: prompt, assistant: completion]``,
no generation prompt) or, without a template, as plain text. Rows are batched with left
padding through ``family.padded_forward`` (each row as if it ran alone), so the last real token
is the last column.

A reward-model directory holds, in mlx-lm's format, ``adapters.safetensors`` +
``adapter_config.json`` (LoRA / DoRA; ``model.safetensors`` with every weight for full
fine-tuning), the head (``reward_head.safetensors``) and ``reward_config.json``: the base model,
a signature of the base (family, sizes and a few embedding values, to refuse a different base),
whether the chat template was used, the longest input, and the mean / std of the rewards over
the training completions (for normalised scores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from tui_trainer.config import AdapterConfig
from tui_trainer.data import template_ids
from tui_trainer.engine.family import Positions, backbone_of, check, family, padded_forward
from tui_trainer.errors import ModelError, one_line
from tui_trainer.fileio import atomic_write_json, replace_path

FORMAT = "tui-trainer-reward-model"
REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"
ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS_FILE = "model.safetensors"  # full fine-tuning: every weight of the base


# ----------------------------------------------------------------------------- formulas

def bradley_terry_loss(r_chosen: mx.array, r_rejected: mx.array, margin: float | mx.array = 0.0) -> mx.array:
    """Per pair: -log sigma(r_c - r_r - m) = log(1 + exp(-(r_c - r_r - m))) (Bradley-Terry;
    ``margin`` m as in Llama 2's reward model, 0 = plain BT), computed stably with logaddexp."""
    return mx.logaddexp(mx.zeros_like(r_chosen), -(r_chosen - r_rejected - margin))


def centering_term(r_chosen: mx.array, r_rejected: mx.array) -> mx.array:
    """Per pair: (r_c + r_r)^2, which keeps the rewards centred on 0 (TRL's
    ``center_rewards_coefficient`` term, Eisenstein et al. 2023); BT alone leaves the offset free."""
    return (r_chosen + r_rejected) ** 2


def reward_loss(r_chosen: mx.array, r_rejected: mx.array, margin: float = 0.0,
                center_coef: float = 0.0) -> mx.array:
    """loss = mean(-log sigma(r_c - r_r - margin)) + center_coef * mean((r_c + r_r)^2)."""
    loss = bradley_terry_loss(r_chosen, r_rejected, margin).mean()
    if center_coef:
        loss = loss + center_coef * centering_term(r_chosen, r_rejected).mean()
    return loss


def pair_accuracy(r_chosen: mx.array, r_rejected: mx.array) -> mx.array:
    """Share of pairs ranked right: mean(r_c > r_r) (a tie counts as wrong)."""
    return (r_chosen > r_rejected).astype(mx.float32).mean()


def mean_margin(r_chosen: mx.array, r_rejected: mx.array) -> mx.array:
    """mean(r_c - r_r)."""
    return (r_chosen - r_rejected).mean()


def preference_probability(r_a: float, r_b: float) -> float:
    """P(a > b) = sigma(r_a - r_b) under Bradley-Terry (stable for large gaps)."""
    d = r_a - r_b
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


def normalise(score: float, mean: float, std: float) -> float:
    """(score - mean) / std, with the training set's statistics (std floored at 1e-8)."""
    return (score - mean) / max(std, 1e-8)


# ----------------------------------------------------------------------------- the model

def hidden_size(model: nn.Module) -> int:
    args = getattr(model, "args", None)
    if args is not None and getattr(args, "hidden_size", None):
        return int(args.hidden_size)
    return int(backbone_of(model).embed_tokens.weight.shape[-1])


class RewardHead(nn.Module):
    """r = w . h + b; w ~ N(0, 1/(D+1)) so initial rewards are O(1), b = 0."""

    def __init__(self, dims: int):
        super().__init__()
        self.linear = nn.Linear(dims, 1)
        self.linear.weight = mx.random.normal(self.linear.weight.shape) / math.sqrt(dims + 1)
        self.linear.bias = mx.zeros_like(self.linear.bias)

    def __call__(self, hidden: mx.array) -> mx.array:
        return self.linear(hidden)[..., 0]


def lora_parameters(adapter: AdapterConfig) -> dict:
    params = {"rank": adapter.rank, "scale": adapter.scale, "dropout": adapter.dropout}
    if adapter.keys:
        params["keys"] = list(adapter.keys)
    return params


class RewardModel(nn.Module):
    """A causal LM's backbone + adapter (or all weights, ``full``) + a scalar head.
    Trainable leaves: the adapter (LoRA/DoRA, as engine/policy.py applies it) or every weight,
    and the head."""

    def __init__(self, model: nn.Module, adapter: AdapterConfig):
        super().__init__()
        check(model)  # a family whose padded batch is not exact is refused, as for the policy
        self.model = model
        self.adapter_type = adapter.type
        model.freeze()
        n_layers = len(backbone_of(model).layers)
        self.adapter_layers = n_layers if adapter.layers < 0 else min(adapter.layers, n_layers)
        self.lora = lora_parameters(adapter)
        if adapter.type in ("lora", "dora"):
            from mlx_lm.tuner.utils import linear_to_lora_layers

            linear_to_lora_layers(model, self.adapter_layers, self.lora, use_dora=adapter.type == "dora")
        elif adapter.type == "full":
            model.unfreeze()
            self.adapter_layers = n_layers
        else:
            raise ValueError(f"unknown adapter type {adapter.type!r}")
        self.head = RewardHead(hidden_size(model))
        from tui_trainer.engine.policy import frozen_prefix_layers

        self.prefix_layers = frozen_prefix_layers(model, self.adapter_layers, adapter.type)
        model.eval()

    def __call__(self, tokens: mx.array, left_pad: mx.array) -> mx.array:
        """Rewards (B,) of a left-padded batch: the head on the last column's hidden state."""
        hidden = padded_forward(self.model, tokens, left_pad)[:, -1]
        return self.head(hidden.astype(mx.float32))

    # The leading blocks that carry no adapter are the same function all through training, so
    # their output for each input can be computed once and the training steps (and evaluations)
    # run the adapted blocks only (llama-family backbones, as the policy's FrozenPrefix).

    def prefix_states(self, rows: Sequence[Sequence[int]], batch_size: int = 8, pad_id: int = 0) -> list[mx.array]:
        """Per row, the output (L_i, D) of the first ``prefix_layers`` blocks, padding cut off."""
        backbone = backbone_of(self.model)
        out: list[Any] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + batch_size]
            tokens, left_pad = pad_left([rows[i] for i in idx], pad_id)
            pos = Positions(left_pad)
            h = backbone.embed_tokens(tokens)
            mask = pos.make_mask(h.shape[1])
            for layer in backbone.layers[:self.prefix_layers]:
                h = layer(h, mask, cache=pos)
            h = mx.stop_gradient(h)
            mx.eval(h)
            for j, i in enumerate(idx):
                out[i] = h[j, int(left_pad[j].item()):]
        return out

    def from_prefix(self, states: Sequence[mx.array]) -> mx.array:
        """Rewards (B,) from ``prefix_states`` rows: left-padded, through the remaining blocks;
        equal to ``__call__`` on the same rows (the padding is masked in every block)."""
        backbone = backbone_of(self.model)
        width = max(s.shape[0] for s in states)
        pads = [width - s.shape[0] for s in states]
        h = mx.stack([mx.pad(s, [(p, 0), (0, 0)]) if p else s for s, p in zip(states, pads)])
        pos = Positions(mx.array(pads, dtype=mx.int32))
        mask = pos.make_mask(width)
        for layer in backbone.layers[self.prefix_layers:]:
            h = layer(h, mask, cache=pos)
        return self.head(backbone.norm(h)[:, -1].astype(mx.float32))

    def adapter_weights(self) -> dict[str, mx.array]:
        """The adapter in mlx-lm's naming (or every weight, for full fine-tuning)."""
        tree = self.model.parameters() if self.adapter_type == "full" else self.model.trainable_parameters()
        return dict(tree_flatten(tree))

    def head_weights(self) -> dict[str, mx.array]:
        return dict(tree_flatten(self.head.parameters()))

    def adapter_config(self, base: str | None) -> dict:
        """adapter_config.json in mlx-lm's format (``mlx_lm.load(base, adapter_path=DIR)`` reads it)."""
        return {"fine_tune_type": self.adapter_type, "num_layers": self.adapter_layers,
                "lora_parameters": self.lora, "model": base}


# ----------------------------------------------------------------------------- inputs

def encode(tokenizer, messages: Sequence[dict], completion: str, chat_template: bool = True,
           max_length: int | None = None) -> list[int]:
    """Token ids of the conversation ``messages + [assistant: completion]``; the last token is
    the one the head reads. Too long: the start is cut (the completion's end is what is scored)."""
    if chat_template:
        conversation = [*messages, {"role": "assistant", "content": completion}]
        ids = template_ids(tokenizer, conversation, add_generation_prompt=False)
    else:
        ids = tokenizer.encode("\n\n".join([m["content"] for m in messages] + [completion]))
    ids = [int(t) for t in ids]
    if not ids:
        ids = [int(tokenizer.eos_token_id or 0)]
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    return ids


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "has_chat_template", getattr(tokenizer, "chat_template", None)))


def pad_left(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[mx.array, mx.array]:
    """(tokens (B, L), left_pad (B,)) of ``rows`` left-padded to the longest."""
    width = max(len(r) for r in rows)
    tokens = mx.array([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=mx.int32)
    return tokens, mx.array([width - len(r) for r in rows], dtype=mx.int32)


def rewards_of(rm: RewardModel, rows: Sequence[Sequence[int]], batch_size: int = 8,
               pad_id: int = 0) -> list[float]:
    """Rewards of token rows, ``batch_size`` at a time (rows of similar length batched together)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = [0.0] * len(rows)
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start:start + batch_size]
        tokens, left_pad = pad_left([rows[i] for i in idx], pad_id)
        values = rm(tokens, left_pad)
        mx.eval(values)
        for i, v in zip(idx, values.tolist()):
            out[i] = float(v)
    return out


# ----------------------------------------------------------------------------- the base's identity

def base_signature(model: nn.Module) -> dict:
    """What identifies the base: family, sizes, and a few values of its embedding (16 dims of
    tokens 0..3), enough to tell a different model while surviving dequantization rounding."""
    backbone = backbone_of(model)
    emb = backbone.embed_tokens
    vocab = int(getattr(emb, "num_embeddings", 0) or emb.weight.shape[0])
    probe = emb(mx.arange(min(4, vocab)))[:, :16].astype(mx.float32)
    return {"family": family(model), "layers": len(backbone.layers), "hidden_size": hidden_size(model),
            "vocab_size": vocab, "embedding_probe": [[round(float(x), 6) for x in row] for row in probe.tolist()]}


def same_base(saved: dict, current: dict) -> str | None:
    """None when ``current`` (a base_signature) is the base ``saved`` was made on; else why not."""
    for k in ("family", "layers", "hidden_size", "vocab_size"):
        if saved.get(k) != current.get(k):
            return f"{k} {saved.get(k)} vs {current.get(k)}"
    a, b = saved.get("embedding_probe") or [], current.get("embedding_probe") or []
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        return "different embedding"
    scale = max([abs(v) for row in a for v in row] + [1e-6])
    worst = max([abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)] + [0.0])
    return None if worst <= 0.02 * scale else f"embedding values differ by {worst:.3g}"


# ----------------------------------------------------------------------------- the directory

def save_reward_model(out_dir: str | os.PathLike, rm: RewardModel, config: dict) -> Path:
    """Write the directory atomically: filled under a temporary name, then renamed in one step
    (an existing reward-model directory is replaced only once the new one is complete)."""
    out = Path(out_dir)
    for part, tensors in (("adapter", rm.adapter_weights()), ("head", rm.head_weights())):
        bad = [k for k, v in tensors.items() if not mx.isfinite(v).all().item()]
        if bad:
            raise ModelError(f"refusing to write {out}: {len(bad)} {part} tensor(s) hold NaN or inf (first: {bad[0]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = WEIGHTS_FILE if rm.adapter_type == "full" else ADAPTER_FILE
        mx.save_safetensors(str(tmp / weights), rm.adapter_weights())
        atomic_write_json(tmp / ADAPTER_CONFIG, rm.adapter_config(config.get("base_model")))
        mx.save_safetensors(str(tmp / HEAD_FILE), rm.head_weights())
        atomic_write_json(tmp / REWARD_CONFIG, {"format": FORMAT, "version": 1, **config})
        replace_path(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """Refuse to replace something that is not a reward-model directory (a run, a model, a file)."""
    out = Path(out_dir)
    if out.is_file() or out.is_symlink():
        raise ModelError(f"{out}: exists and is not a directory; give a new directory for the reward model")
    if out.is_dir() and any(out.iterdir()) and not (out / REWARD_CONFIG).is_file():
        raise ModelError(f"{out}: a non-empty directory that is not a reward model; give a new or empty directory")


def read_reward_config(path: str | os.PathLike) -> dict:
    """reward_config.json of a reward-model directory; ModelError (one line) if it is not one."""
    root = Path(path)
    file = root / REWARD_CONFIG
    if not root.is_dir():
        raise ModelError(f"{root}: no such reward-model directory")
    if not file.is_file():
        raise ModelError(f"{root}: not a reward-model directory (no {REWARD_CONFIG}; write one with "
                         "`tui-trainer reward train`, or give a Hugging Face *ForSequenceClassification "
                         "reward model)")
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: unreadable ({one_line(exc)})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ModelError(f"{file}: not a tui-trainer reward-model config")
    return cfg


def reward_model_info(path: str | os.PathLike) -> dict:
    """What ``path`` holds, checked without loading a model: the reward_config.json of a directory
    written by ``reward train``, or the description of a Hugging Face sequence-classification reward
    model (``format`` ``hf-sequence-classification``: a directory or a cached hub repo id, see
    engine/hf_reward.py). ModelError (one line) for anything else."""
    from tui_trainer.engine.hf_reward import hf_reward_info

    if not (Path(path) / REWARD_CONFIG).is_file():
        info = hf_reward_info(path)
        if info is not None:
            return info
    return read_reward_config(path)


def is_hf(cfg: dict) -> bool:
    """Whether a ``reward_model_info`` is a Hugging Face reward model's."""
    from tui_trainer.engine.hf_reward import FORMAT as HF_FORMAT

    return cfg.get("format") == HF_FORMAT


def load_reward_model(path: str | os.PathLike, model: str | None = None, loaded: tuple | None = None):
    """``(RewardModel, tokenizer, reward_config)`` from a directory written by ``reward train``.

    The base is the one recorded in the directory, or ``model`` (a path, as for ``--model``),
    or ``loaded`` (an already loaded ``(model, tokenizer)``); a base that is not the one the
    reward model was trained on is refused (ModelError, one line)."""
    from tui_trainer.engine.models import load_policy

    root = Path(path)
    cfg = read_reward_config(root)
    if loaded is not None:
        base, tokenizer = loaded
        given = "the given model"
    else:
        given = model if model is not None else cfg.get("base_model")
        try:
            base, tokenizer = load_policy(given)
        except ModelError as exc:
            if model is None:
                raise ModelError(f"{root}: its base model cannot be loaded ({exc}); give it with --model") from None
            raise
        given = given if given is not None else "the embedded model"
    why = same_base(cfg.get("base_signature") or {}, base_signature(base))
    if why is not None:
        shown = cfg.get("base_model") or "the embedded model"
        raise ModelError(f"{root}: trained on {shown}, but {given} is a different model ({why})")
    adapter = AdapterConfig(type=cfg.get("adapter_type", "lora"), layers=int(cfg.get("adapter_layers", -1)),
                            **{k: v for k, v in (cfg.get("lora_parameters") or {}).items()
                               if k in ("rank", "scale", "dropout", "keys")})
    rm = RewardModel(base, adapter)
    weights = root / (WEIGHTS_FILE if adapter.type == "full" else ADAPTER_FILE)
    try:
        rm.model.load_weights(str(weights), strict=adapter.type == "full")
        rm.head.load_weights(str(root / HEAD_FILE))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{root}: unreadable reward-model weights ({one_line(exc)})") from None
    rm.freeze()
    rm.eval()
    mx.eval(rm.parameters())
    return rm, tokenizer, cfg


class RewardScorer:
    """Scores (prompt, completion) pairs with a loaded reward model: raw rewards, or normalised
    with the training set's mean / std."""

    def __init__(self, rm: RewardModel, tokenizer, cfg: dict, batch_size: int = 8):
        self.rm, self.tokenizer, self.cfg = rm, tokenizer, cfg
        self.batch_size = batch_size
        self.chat_template = bool(cfg.get("chat_template", True))
        self.max_length = cfg.get("max_length")
        stats = cfg.get("score_stats") or {}
        self.has_stats = bool(stats)  # a Hugging Face reward model has none: its scores stay raw
        self.mean, self.std = float(stats.get("mean", 0.0)), float(stats.get("std", 1.0))

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | None = None, batch_size: int = 8) -> "RewardScorer":
        """The scorer of a directory written by ``reward train`` or of a Hugging Face reward model."""
        if is_hf(reward_model_info(path)):
            from tui_trainer.engine.hf_reward import HFRewardScorer

            return HFRewardScorer.load(path, model, batch_size=batch_size)
        return cls(*load_reward_model(path, model), batch_size=batch_size)

    def ids(self, prompt: str | Sequence[dict], completion: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return encode(self.tokenizer, messages, completion, self.chat_template, self.max_length)

    def rewards(self, prompts: Sequence[Any], completions: Sequence[str], normalised: bool = False) -> list[float]:
        rows = [self.ids(p, c) for p, c in zip(prompts, completions)]
        values = rewards_of(self.rm, rows, self.batch_size, pad_id=pad_id_of(self.tokenizer))
        return [normalise(v, self.mean, self.std) for v in values] if normalised and self.has_stats else values


def pad_id_of(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


# ----------------------------------------------------------------------------- on the policy's own base

class SharedBaseReward:
    """A LoRA / DoRA reward model run on a base already in memory under another adapter (the
    policy's): no second copy of the base weights.

    Its adapter layers are built around the same base layers the policy's adapter wraps (mlx-lm's
    ``linear_to_lora_layers`` run with the policy's adapter switched off, so it finds the base
    layers, then the policy's layers put back). For scoring, every adapted layer is switched to
    its base and the reward's adapter layers are switched in, the way ``policy.adapter_off``
    switches the policy's adapter off for the reference; everything is put back on exit.
    Callable like a RewardModel: ``self(tokens, left_pad) -> rewards``. The caller keeps MLX on
    one thread (the engine's) while it scores.
    """

    def __init__(self, model: nn.Module, path: str | os.PathLike):
        from mlx.utils import tree_unflatten
        from mlx_lm.tuner.utils import linear_to_lora_layers

        from tui_trainer.engine.policy import ADAPTER_TYPES

        root = Path(path)
        cfg = read_reward_config(root)
        if cfg.get("adapter_type") not in ("lora", "dora"):
            raise ModelError(f"{root}: a {cfg.get('adapter_type')} reward model has its own weights; only a LoRA or "
                             "DoRA reward model can share the policy's base")
        why = same_base(cfg.get("base_signature") or {}, base_signature(model))
        if why is not None:
            raise ModelError(f"{root}: trained on {cfg.get('base_model') or 'the embedded model'}, not on the "
                             f"policy's base ({why})")
        self.model, self.cfg = model, cfg
        self._unflatten = tree_unflatten
        policy = [(name, m) for name, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)]
        self._bases = {name: _base_of(m) for name, m in policy}
        model.update_modules(tree_unflatten(list(self._bases.items())))
        try:
            linear_to_lora_layers(model, int(cfg.get("adapter_layers", 0)), dict(cfg.get("lora_parameters") or {}),
                                  use_dora=cfg["adapter_type"] == "dora")
            self._reward = [(name, m) for name, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)]
            for name, m in self._reward:
                self._bases.setdefault(name, _base_of(m))
            adapters = mx.load(str(root / ADAPTER_FILE))
            mine = {name for name, _ in self._reward}
            if not all(k.rpartition(".")[0] in mine for k in adapters):
                raise ModelError(f"{root}: its adapter does not fit the layers its adapter_config.json names")
            model.load_weights(list(adapters.items()), strict=False)
            mx.eval([m.parameters() for _, m in self._reward])
        finally:
            model.update_modules(tree_unflatten(list(self._bases.items())))
            if policy:
                model.update_modules(tree_unflatten(policy))
        self.head = RewardHead(hidden_size(model))
        self.head.load_weights(str(root / HEAD_FILE))
        self.head.freeze()

    @property
    def reward_layers(self) -> list[tuple[str, nn.Module]]:
        return list(self._reward)

    def __call__(self, tokens: mx.array, left_pad: mx.array) -> mx.array:
        model = self.model
        current = dict(model.named_modules())
        saved = [(name, current[name]) for name in self._bases]
        model.update_modules(self._unflatten(list(self._bases.items())))
        model.update_modules(self._unflatten(self._reward))
        try:
            hidden = mx.stop_gradient(padded_forward(model, tokens, left_pad)[:, -1])
            rewards = self.head(hidden.astype(mx.float32))
            mx.eval(rewards)
            return rewards
        finally:
            model.update_modules(self._unflatten(saved))

    def scorer(self, tokenizer, batch_size: int = 8) -> "RewardScorer":
        """A RewardScorer (text in, scores out) that scores through this shared base."""
        return RewardScorer(self, tokenizer, self.cfg, batch_size=batch_size)


def _base_of(module: nn.Module) -> nn.Module:
    return module.linear if hasattr(module, "linear") else module.embedding
