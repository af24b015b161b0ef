"""`reward train`: fit a Bradley-Terry reward model on preference pairs.

Each optimizer step takes ``batch_size`` pairs, runs their chosen and rejected conversations
as one left-padded batch, and minimises ``reward.reward_loss`` (BT, optional margin and
centring term) over the adapter (or every weight) and the head, with Adam and gradient
clipping. A seeded share of the pairs is held out; before training, at the end of each epoch
(and every ``eval_every`` steps) the held-out loss, accuracy (share of pairs ranked right) and
mean margin are reported. When the adapter leaves leading blocks frozen (llama family), their
output for every input is computed once and the steps run the adapted blocks only. At the end the rewards of every training completion give the mean / std
stored for normalised scores, and the directory is written atomically.

It reports through an observer, like the PPO trainer: ``Progress`` (phase "reward", steps done
of all steps, ``detail`` "epoch e/E"), ``StepMetrics`` (one per evaluation) and ``LogMessage``.
A checkpoint (adapter, head, optimizer state, position, reports so far) is written beside the
output as ``DIR.checkpoint`` at the end of each epoch and every ``save_every`` steps; ``resume``
continues from it exactly (same pairs and settings; the batch order is a function of seed and
epoch), and it is removed once the directory is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, RewardTrainConfig
from tui_trainer.engine import reward as R
from tui_trainer.errors import DataError, TrainerError, one_line
from tui_trainer.fileio import atomic_write_json, replace_path
from tui_trainer.preferences import Pair

PHASE = "reward"
PREFIX_CACHE_BYTES = 1 << 30  # the frozen blocks' outputs are kept when they fit in this


def split_pairs(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: a seeded shuffle; at least one held-out pair when the fraction
    is > 0 and there are two pairs or more, and at least one training pair."""
    order = list(range(n))
    random.Random(f"tui-trainer-reward-split:{seed}").shuffle(order)
    n_eval = 0
    if eval_fraction > 0 and n >= 2:
        n_eval = min(n - 1, max(1, round(n * eval_fraction)))
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def model_ref(model: str | None) -> str | None:
    """How the directory names its base: an absolute path for a local one (the directory may be
    used from elsewhere), a hub id as given, None for the embedded model."""
    if model is None:
        return None
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def evaluate(chosen: Sequence[float], rejected: Sequence[float], cfg: RewardTrainConfig) -> dict[str, float]:
    """Held-out loss (the training loss's formula), accuracy and mean margin from the rewards."""
    rc, rr = mx.array(list(chosen)), mx.array(list(rejected))
    return {"loss": R.reward_loss(rc, rr, cfg.margin, cfg.center_coef).item(),
            "accuracy": R.pair_accuracy(rc, rr).item(), "margin": R.mean_margin(rc, rr).item()}


def train_reward_model(cfg: RewardTrainConfig, pairs: list[Pair], out_dir: str | Path,
                       observer: Callable[[Any], None] | None = None, loaded: tuple | None = None,
                       resume: bool = False) -> dict:
    """Train on ``pairs``, write the directory ``out_dir``; returns the final summary (what
    reward_config.json's "train" holds). ``loaded``: an already loaded ``(model, tokenizer)``.
    ``resume``: continue from the checkpoint ``checkpoint_dir(out_dir)`` of an interrupted run."""
    emit = observer or (lambda event: None)
    R.check_output_dir(out_dir)
    if not pairs:
        raise DataError("no preference pairs to train on")
    ckpt_dir = checkpoint_dir(out_dir)
    fingerprint = run_fingerprint(cfg, pairs)
    checkpoint = read_checkpoint(ckpt_dir, fingerprint) if resume else None
    if not resume and ckpt_dir.exists():
        raise TrainerError(f"{ckpt_dir}: an interrupted reward training left this checkpoint; continue it with "
                           "--resume, or delete it to start again")
    mx.random.seed(cfg.seed)
    emit(ev.Progress(0, "loading", 0, 3, "parts", detail="model"))
    if loaded is None:
        from tui_trainer.engine.models import load_policy

        loaded = load_policy(cfg.model)
    model, tokenizer = loaded
    signature = R.base_signature(model)
    adapter = AdapterConfig(type=cfg.adapter_type, rank=cfg.rank, scale=cfg.scale, layers=cfg.layers)
    rm = R.RewardModel(model, adapter)
    mx.eval(rm.parameters())

    emit(ev.Progress(0, "loading", 1, 3, "parts", detail="tokenizing pairs"))
    chat = cfg.chat_template
    if chat and not R.has_chat_template(tokenizer):
        raise DataError("the tokenizer has no chat template; use --chat-template false")
    pad_id = R.pad_id_of(tokenizer)
    chosen_ids, rejected_ids = [], []
    cut = 0
    for p in pairs:
        full = [R.encode(tokenizer, p.messages, text, chat) for text in (p.chosen, p.rejected)]
        cut += sum(len(ids) > cfg.max_length for ids in full)
        chosen_ids.append(full[0][-cfg.max_length:])
        rejected_ids.append(full[1][-cfg.max_length:])
    if cut:
        emit(ev.LogMessage("warning", f"{cut} input(s) longer than {cfg.max_length} tokens lost their start"))
    train_idx, eval_idx = split_pairs(len(pairs), cfg.eval_fraction, cfg.seed)
    emit(ev.LogMessage("info", f"{len(train_idx)} training pair(s), {len(eval_idx)} held out; "
                               f"{cfg.adapter_type} on {rm.adapter_layers} block(s)"))

    # the frozen leading blocks' output per input, computed once (when the adapter leaves some
    # blocks frozen and the outputs fit in PREFIX_CACHE_BYTES)
    n_tokens = sum(len(ids) for ids in chosen_ids + rejected_ids)
    cache = None
    if rm.prefix_layers and n_tokens * R.hidden_size(model) * 4 <= PREFIX_CACHE_BYTES:
        emit(ev.Progress(0, "loading", 2, 3, "parts", detail=f"running the {rm.prefix_layers} frozen block(s) once"))
        states = rm.prefix_states(chosen_ids + rejected_ids, 2 * cfg.batch_size, pad_id)
        cache = (states[:len(pairs)], states[len(pairs):])

    def rewards(side: int, idx: list[int]) -> list[float]:
        """Rewards of the chosen (side 0) or rejected (1) inputs of pairs ``idx``."""
        if cache is None:
            return R.rewards_of(rm, [(chosen_ids, rejected_ids)[side][i] for i in idx], 2 * cfg.batch_size, pad_id)
        out = []
        for start in range(0, len(idx), 2 * cfg.batch_size):
            values = rm.from_prefix([cache[side][i] for i in idx[start:start + 2 * cfg.batch_size]])
            mx.eval(values)
            out += values.tolist()
        return out

    def batch_rewards(batch: list[int]) -> mx.array:
        """Rewards (2B,) of a batch: its chosen inputs, then its rejected ones."""
        if cache is None:
            return rm(*R.pad_left([chosen_ids[i] for i in batch] + [rejected_ids[i] for i in batch], pad_id))
        return rm.from_prefix([cache[0][i] for i in batch] + [cache[1][i] for i in batch])

    opt = optim.Adam(learning_rate=cfg.learning_rate)

    def loss_fn(model, batch):
        r = batch_rewards(batch)
        n = len(batch)
        return R.reward_loss(r[:n], r[n:], cfg.margin, cfg.center_coef), r

    loss_and_grad = nn.value_and_grad(rm, loss_fn)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    emit(ev.Progress(0, "loading", 3, 3, "parts", detail="ready"))
    history: list[dict] = []
    step = 0
    since = {"loss": 0.0, "correct": 0.0, "pairs": 0}
    first_epoch, first_start = 1, 0
    if checkpoint is not None:
        state = checkpoint["state"]
        rm.model.load_weights(list(checkpoint["adapter"].items()), strict=cfg.adapter_type == "full")
        rm.head.load_weights(list(checkpoint["head"].items()))
        opt.init(rm.trainable_parameters())
        opt.state = tree_unflatten(list(checkpoint["optimizer"].items()))
        mx.eval(rm.parameters(), opt.state)
        step, history, since = state["step"], state["history"], state["since"]
        first_epoch, first_start = state["epoch"], state["start"]
        emit(ev.LogMessage("info", f"resuming at step {step} (epoch {first_epoch}) from {ckpt_dir}"))
    t0 = time.perf_counter() - (history[-1]["time"] if history else 0.0)

    def save(epoch: int, start: int) -> None:
        """A checkpoint from which the run continues exactly: next batch = ``start`` of ``epoch``."""
        write_checkpoint(ckpt_dir, rm, opt, {"fingerprint": fingerprint, "step": step, "epoch": epoch,
                                             "start": start, "since": since, "history": history})

    def report(epoch: int) -> dict:
        values: dict[str, float] = {"epoch": epoch, "pairs_seen": step * cfg.batch_size}
        if since["pairs"]:
            values["loss"] = since["loss"] / since["pairs"]
            values["accuracy"] = since["correct"] / since["pairs"]
        if eval_idx:
            got = evaluate(rewards(0, eval_idx), rewards(1, eval_idx), cfg)
            values.update({f"eval_{k}": v for k, v in got.items()})
        values["time"] = time.perf_counter() - t0
        since.update(loss=0.0, correct=0.0, pairs=0)
        history.append({"step": step, **values})
        emit(ev.StepMetrics(step, values))
        return values

    if eval_idx and checkpoint is None:
        report(0)  # the untrained model, for comparison
    final = history[-1] if history else {}
    for epoch in range(first_epoch, cfg.epochs + 1):
        order = list(train_idx)
        random.Random(f"tui-trainer-reward-order:{cfg.seed}:{epoch}").shuffle(order)
        for start in range(first_start if epoch == first_epoch else 0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            (loss, r), grads = loss_and_grad(rm, batch)
            grads, _ = optim.clip_grad_norm(grads, cfg.max_grad_norm)
            opt.update(rm, grads)
            mx.eval(rm.trainable_parameters(), opt.state, loss, r)
            step += 1
            n = len(batch)
            since["loss"] += loss.item() * n
            since["correct"] += R.pair_accuracy(r[:n], r[n:]).item() * n
            since["pairs"] += n
            emit(ev.Progress(step, PHASE, step, total, "steps", detail=f"epoch {epoch}/{cfg.epochs}",
                             elapsed=time.perf_counter() - t0))
            if cfg.eval_every and step % cfg.eval_every == 0 and start + cfg.batch_size < len(order):
                report(epoch)
            if cfg.save_every and step % cfg.save_every == 0 and start + cfg.batch_size < len(order):
                save(epoch, start + cfg.batch_size)
        final = report(epoch)
        save(epoch + 1, 0)

    emit(ev.Progress(step, PHASE, step, total, "steps", detail="score statistics"))
    train_rewards = rewards(0, train_idx) + rewards(1, train_idx)
    mean = sum(train_rewards) / len(train_rewards)
    std = math.sqrt(sum((v - mean) ** 2 for v in train_rewards) / max(1, len(train_rewards) - 1))
    summary = {
        "pairs": len(pairs), "train_pairs": len(train_idx), "eval_pairs": len(eval_idx), "epochs": cfg.epochs,
        "steps": step, "final": final, "history": history,
        "settings": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
    config = {
        "base_model": model_ref(cfg.model), "base_signature": signature, "adapter_type": cfg.adapter_type,
        "adapter_layers": rm.adapter_layers, "lora_parameters": rm.lora, "chat_template": chat,
        "max_length": cfg.max_length, "score_stats": {"mean": mean, "std": std, "count": len(train_rewards)},
        "train": summary,
    }
    R.save_reward_model(out_dir, rm, config)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    emit(ev.LogMessage("info", f"reward model written to {out_dir}"))
    return summary


# ----------------------------------------------------------------------------- resume

def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where an unfinished run keeps its checkpoint: beside the output, ``DIR.checkpoint``."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.checkpoint"


def run_fingerprint(cfg: RewardTrainConfig, pairs: list[Pair]) -> str:
    """What must be the same to continue a run: the pairs and every setting but the number of
    epochs and how often it reports or saves."""
    h = hashlib.sha256()
    fixed = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("epochs", "eval_every", "save_every")}
    h.update(json.dumps(fixed, sort_keys=True).encode())
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
    return h.hexdigest()[:16]


def write_checkpoint(path: Path, rm: R.RewardModel, opt: optim.Optimizer, state: dict) -> None:
    """adapter + head + optimizer state + position, written under a temporary name and renamed."""
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "adapter.safetensors"), rm.adapter_weights())
    mx.save_safetensors(str(tmp / "head.safetensors"), rm.head_weights())
    mx.save_safetensors(str(tmp / "optimizer.safetensors"),
                        {k: v for k, v in tree_flatten(opt.state) if isinstance(v, mx.array)})
    atomic_write_json(tmp / "state.json", state)
    replace_path(tmp, path)


def read_checkpoint(path: Path, fingerprint: str) -> dict:
    if not (path / "state.json").is_file():
        raise TrainerError(f"{path}: no checkpoint to resume from (a run that was interrupted leaves one)")
    try:
        state = json.loads((path / "state.json").read_text())
        out = {"state": state, "adapter": mx.load(str(path / "adapter.safetensors")),
               "head": mx.load(str(path / "head.safetensors")),
               "optimizer": mx.load(str(path / "optimizer.safetensors"))}
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainerError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None
    if state.get("fingerprint") != fingerprint:
        raise TrainerError(f"{path}: the checkpoint was made with other pairs or settings; resume with the same "
                           "--data and flags (only --epochs, --eval-every and --save-every may change)")
    return out
