"""Hugging Face sequence-classification reward models (``<X>ForSequenceClassification`` with one
output, e.g. the Skywork-Reward-V2 family), scored as transformers scores them, on MLX.

The backbone is mlx-lm's own model class for the checkpoint's ``model_type`` (its ``Model``'s
``.model``), loaded from the checkpoint's ``model.*`` weights (every one must be there; the LM head
is not, and is not used), plus the ``score`` linear head. As in transformers'
``*ForSequenceClassification``, the score is the head on the final hidden state (final norm applied)
of the last token whose id is not the config's ``pad_token_id`` (the last token when it has none).
Rows are batched with left padding through ``family.padded_forward`` (each row as if it ran alone),
and that position is found in each row's own tokens.

The conversation ``[user: prompt, assistant: completion]`` is formatted as Skywork-Reward-V2's model
card does with transformers: ``tokenizer.apply_chat_template(conv, tokenize=False)``, one leading
BOS token stripped from the text, then the text tokenized by the checkpoint's tokenizer
(``transformers.AutoTokenizer``, which adds its own special tokens as the card's call does).

A checkpoint that is not a single-score classifier (``num_labels`` other than 1, a head with several
outputs), an architecture that is not ``*ForSequenceClassification``, a ``model_type`` mlx-lm does
not have, or missing weights is refused with one line (ModelError).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from tui_trainer.engine.family import backbone_of, padded_forward
from tui_trainer.engine.reward import RewardScorer
from tui_trainer.errors import DataError, ModelError, one_line

FORMAT = "hf-sequence-classification"  # the "format" of the description hf_reward_info returns
SUFFIX = "ForSequenceClassification"


# ----------------------------------------------------------------------------- the checkpoint

def _config_of(root: Path) -> dict | None:
    file = root / "config.json"
    if not file.is_file():
        return None
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: unreadable ({one_line(exc)})") from None
    return cfg if isinstance(cfg, dict) else None


def architectures_of(cfg: dict) -> list[str]:
    arch = cfg.get("architectures") or []
    return [arch] if isinstance(arch, str) else [str(a) for a in arch]


def num_labels_of(cfg: dict) -> int:
    """As transformers' config: ``num_labels`` when given, else the size of ``id2label``, else 2."""
    if cfg.get("num_labels") is not None:
        return int(cfg["num_labels"])
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return 2


def pad_token_id_of(cfg: dict) -> int | None:
    """The pad token transformers pools by: the (text) config's ``pad_token_id``."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    pad = text.get("pad_token_id", cfg.get("pad_token_id")) if text else cfg.get("pad_token_id")
    if isinstance(pad, list):
        pad = pad[0] if pad else None
    return int(pad) if pad is not None else None


def hf_reward_info(path: str | os.PathLike) -> dict | None:
    """The description of the Hugging Face sequence-classification reward model at ``path`` (a
    directory, or a hub repo id already in the local cache): ``{"format", "path", "architecture",
    "model_type", "pad_token_id"}``. None when ``path`` is not a Hugging Face checkpoint with a
    ``*ForSequenceClassification`` architecture (a plain causal LM, a tui-trainer reward model, no
    config.json); ModelError (one line) when it is one but not a single-score classifier."""
    root = local_dir(path)
    if root is None:
        return None
    cfg = _config_of(root)
    if cfg is None:
        return None
    archs = architectures_of(cfg)
    seqcls = [a for a in archs if a.endswith(SUFFIX)]
    if not seqcls:
        return None
    labels = num_labels_of(cfg)
    if labels != 1:
        raise ModelError(f"{root}: {seqcls[0]} is not a single-score classifier: num_labels {labels} "
                         "(a reward model has num_labels 1)")
    return {"format": FORMAT, "path": str(root), "architecture": seqcls[0], "model_type": cfg.get("model_type"),
            "pad_token_id": pad_token_id_of(cfg)}


def local_dir(path: str | os.PathLike) -> Path | None:
    """``path`` as a local directory: itself, or the cached snapshot of a hub repo id (no network,
    as ``models.locate_model`` finds a policy). None when it is neither."""
    from tui_trainer.engine.models import locate_model

    root = Path(path).expanduser()
    if root.is_dir():
        return root
    try:
        _, target = locate_model(str(path))
    except ModelError:  # no such path, a hub id not in the cache
        return None
    return target if target.is_dir() else None


class HFRewardModel(nn.Module):
    """mlx-lm's model of the checkpoint's family (its backbone loaded) + the ``score`` head.
    Callable like a RewardModel: ``self(tokens, left_pad) -> rewards (B,)``."""

    def __init__(self, model: nn.Module, score: nn.Linear, pad_token_id: int | None):
        super().__init__()
        self.model = model
        self.score = score
        self.pad_token_id = pad_token_id

    def pooled_positions(self, tokens: mx.array, left_pad: mx.array) -> mx.array:
        """Per row of a left-padded batch, the column transformers pools: in the row's own tokens,
        the last one that is not the pad token (``(arange * non_pad).argmax()``: 0 when all are)."""
        cols = mx.arange(tokens.shape[1])[None, :]
        rel = cols - left_pad[:, None]  # the index in the row alone; < 0 on the padding
        keep = rel >= 0
        if self.pad_token_id is not None:
            keep = keep & (tokens != self.pad_token_id)
        else:
            keep = keep & (cols == tokens.shape[1] - 1)  # no pad token: the last token
        last = mx.maximum(mx.where(keep, rel, -1).max(axis=1), 0)
        return left_pad + last

    def __call__(self, tokens: mx.array, left_pad: mx.array) -> mx.array:
        hidden = padded_forward(self.model, tokens, left_pad)
        at = self.pooled_positions(tokens, left_pad)
        pooled = mx.take_along_axis(hidden, at[:, None, None], axis=1)[:, 0]
        return self.score(pooled.astype(mx.float32))[:, 0]


def load_hf_reward_model(path: str | os.PathLike):
    """``(HFRewardModel, tokenizer, info)`` from a Hugging Face sequence-classification checkpoint."""
    from mlx_lm.utils import _get_classes, load_config

    from tui_trainer.engine.models import compute_dtype

    info = hf_reward_info(path)
    if info is None:
        raise ModelError(f"{path}: not a Hugging Face *{SUFFIX} checkpoint")
    root = Path(info["path"])
    config = load_config(root)
    if config.get("quantization") or config.get("quantization_config"):
        raise ModelError(f"{root}: a quantized checkpoint; only float (fp32 / fp16 / bf16) reward models are "
                         "supported")
    _flat_rope(config)
    try:
        model_class, args_class = _get_classes(config)
        model = model_class(args_class.from_dict(config))
    except Exception as exc:  # noqa: BLE001  an unknown model_type, a config its class refuses
        raise ModelError(f"{root}: {info['architecture']}: mlx-lm cannot build model_type "
                         f"{config.get('model_type')!r} ({one_line(exc)})") from None
    files = sorted(glob.glob(str(root / "model*.safetensors")))
    if not files:
        raise ModelError(f"{root}: no model*.safetensors weights (a .bin checkpoint: convert it with "
                         "save_pretrained(safe_serialization=True))")
    weights: dict[str, mx.array] = {}
    try:
        for f in files:
            weights.update(mx.load(f))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{root}: unreadable weights ({one_line(exc)})") from None
    head = {k.removeprefix("score."): weights.pop(k) for k in list(weights) if k.startswith("score.")}
    if "weight" not in head:
        raise ModelError(f"{root}: no score.weight: not a {SUFFIX} reward model")
    if head["weight"].ndim != 2 or head["weight"].shape[0] != 1:
        raise ModelError(f"{root}: not a single-score classifier: the score head has "
                         f"{head['weight'].shape[0]} outputs")
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    wanted = dict(tree_flatten(model.parameters()))
    missing = [k for k in wanted if k not in weights and not k.startswith("lm_head.")]
    extra = [k for k in weights if k not in wanted]
    if missing:
        raise ModelError(f"{root}: {len(missing)} backbone weight(s) missing from the checkpoint "
                         f"(first: {missing[0]})")
    if extra:
        raise ModelError(f"{root}: {len(extra)} weight(s) mlx-lm's {config.get('model_type')} model has no place "
                         f"for (first: {extra[0]})")
    bad = [k for k in weights if weights[k].shape != wanted[k].shape]
    if bad:
        raise ModelError(f"{root}: weight {bad[0]} has shape {tuple(weights[bad[0]].shape)}, the config says "
                         f"{tuple(wanted[bad[0]].shape)}")
    model.load_weights(list(weights.items()), strict=False)
    model.set_dtype(compute_dtype())
    _share_lm_head(model)
    score = nn.Linear(int(head["weight"].shape[1]), 1, bias="bias" in head)
    score.load_weights(list(head.items()))
    score.set_dtype(mx.float32)
    rm = HFRewardModel(model, score, info["pad_token_id"])
    rm.freeze()
    rm.eval()
    mx.eval(rm.parameters())
    return rm, load_tokenizer(root), info


def _flat_rope(config: dict) -> None:
    """transformers >= 5 writes ``rope_theta`` / ``rope_scaling`` nested in ``rope_parameters``; some
    of mlx-lm's families (llama among them) read only the flat keys and would silently use their
    default base. Give them the flat keys too (as mlx-lm's qwen3 does itself)."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return
    if rope.get("rope_theta") is not None:
        config.setdefault("rope_theta", rope["rope_theta"])
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        config.setdefault("rope_scaling", dict(rope))


def _share_lm_head(model: nn.Module) -> None:
    """The checkpoint has no LM head (the score head replaces it) and the score never uses one;
    an untied family's ``lm_head`` gets the embedding's array, so no random vocab x hidden matrix
    is ever made (mlx-lm's padded-batch check runs the whole model once)."""
    head = getattr(model, "lm_head", None)
    emb = getattr(backbone_of(model), "embed_tokens", None)
    if isinstance(head, nn.Linear) and emb is not None and "bias" not in head:
        if head.weight.shape == emb.weight.shape and emb.weight.dtype != mx.uint32:
            head.weight = emb.weight


def load_tokenizer(root: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root))
    except Exception as exc:  # noqa: BLE001  a missing or broken tokenizer
        raise ModelError(f"{root}: cannot load its tokenizer ({one_line(exc)})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{root}: its tokenizer has no chat template (a reward model scores the conversation "
                         "formatted with its own template)")
    return tokenizer


# ----------------------------------------------------------------------------- inputs

def card_ids(tokenizer, messages: Sequence[dict], completion: str) -> list[int]:
    """Token ids of ``messages + [assistant: completion]`` as Skywork-Reward-V2's model card makes
    them: the chat template as text, one leading BOS token stripped, then tokenized."""
    conversation = [*messages, {"role": "assistant", "content": completion}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception as exc:  # noqa: BLE001  jinja errors for roles a template refuses, and the like
        raise DataError(f"the reward model's chat template failed ({one_line(exc)[:200]})") from None
    bos = tokenizer.bos_token
    if bos is not None and text.startswith(bos):
        text = text[len(bos):]
    return [int(t) for t in tokenizer(text)["input_ids"]]


class HFRewardScorer(RewardScorer):
    """Scores (prompt, completion) pairs with a Hugging Face reward model, formatted as its model
    card does. It has no stored statistics: ``normalised`` scores are the raw ones."""

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | None = None, batch_size: int = 8) -> "HFRewardScorer":
        if model is not None:
            raise ModelError(f"{path}: a Hugging Face reward model has its own backbone; a base model "
                             f"({model}) does not apply to it")
        rm, tokenizer, info = load_hf_reward_model(path)
        return cls(rm, tokenizer, info, batch_size=batch_size)

    def ids(self, prompt: str | Sequence[dict], completion: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return card_ids(self.tokenizer, messages, completion)
