"""Checkpoints: ``runs/<name>/checkpoints/<step>/``, written atomically.

Each holds ``adapters.safetensors`` + ``adapter_config.json`` in mlx-lm's format
(``mlx_lm.generate --adapter-path`` loads them onto an mlx-lm model), the value
head, both optimizers' state, and ``state.json`` (step, beta, data position,
RNG seeds). The folder is filled under a temporary name and renamed in one step,
so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from tui_trainer.errors import TrainerError, one_line
from tui_trainer.fileio import atomic_write_json, replace_path


def _flat(tree) -> dict[str, mx.array]:
    return {k: v for k, v in tree_flatten(tree) if isinstance(v, mx.array)}


def adapter_config(policy, base: tuple[str, dict], **tui_trainer) -> dict:
    """adapter_config.json for ``policy``: mlx-lm's keys (what ``load_adapters`` reads), the base model
    (``base``: models.model_reference and models.base_fingerprint of it, taken when the run loaded it)
    and tui-trainer's own entries (step, mode)."""
    return {
        "fine_tune_type": policy.adapter_type,
        "num_layers": policy.adapter_layers,
        "lora_parameters": policy.lora_parameters,
        "model": base[0],
        "tui_trainer": {**tui_trainer, "base": base[1]},
    }


def save_checkpoint(run_dir: Path, step: int, *, adapter_weights: dict, adapter_config: dict,
                    value_head: dict, optimizers: dict[str, Any], state: dict) -> Path:
    opt = {}
    for name, optimizer in optimizers.items():
        opt.update({f"{name}.{k}": v for k, v in _flat(optimizer.state).items()})
    for part, tensors in (("adapter", adapter_weights), ("value head", value_head), ("optimizer state", opt)):
        bad = [k for k, v in _flat(tensors).items() if not mx.isfinite(v).all().item()]
        if bad:
            raise TrainerError(f"refusing to write checkpoint {step}: {len(bad)} {part} tensor(s) hold NaN or "
                               f"inf (first: {bad[0]})")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{step:06d}"
    tmp = root / f".tmp-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mx.save_safetensors(str(tmp / "adapters.safetensors"), adapter_weights)
    atomic_write_json(tmp / "adapter_config.json", adapter_config)
    mx.save_safetensors(str(tmp / "value_head.safetensors"), value_head)
    if opt:
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt)
    atomic_write_json(tmp / "state.json", state)
    replace_path(tmp, final)  # the same step saved twice (e.g. save_every and stop) replaces it
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    return steps[-1] if steps else None


def load_checkpoint(path: Path) -> dict:
    """Everything in a checkpoint folder; raises TrainerError with one line if unreadable."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        adapters = mx.load(str(path / "adapters.safetensors"))
        value_head = mx.load(str(path / "value_head.safetensors"))
        opt_file = path / "optimizer.safetensors"
        optim = mx.load(str(opt_file)) if opt_file.exists() else {}
        adapter_config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError, RuntimeError) as exc:
        raise TrainerError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None
    opt_states: dict[str, dict] = {}
    for key, value in optim.items():
        name, rest = key.split(".", 1)
        opt_states.setdefault(name, {})[rest] = value
    return {
        "state": state,
        "adapters": adapters,
        "value_head": value_head,
        "optimizers": {k: tree_unflatten(list(v.items())) for k, v in opt_states.items()},
        "adapter_config": adapter_config,
    }
