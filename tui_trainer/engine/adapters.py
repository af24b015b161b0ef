"""Start the policy from an mlx-lm adapter: ``init_adapter`` (alias ``resume_adapter_file``), SFT -> PPO.

Like mlx-lm's ``resume_adapter_file``, the saved weights go into the adapter the run's
config describes (``adapter:`` / ``lora_parameters:``). mlx-lm loads them with
``strict=False`` and says nothing when they do not fit; here they must fit, checked before
step 1, or the run stops with one line:

* every tensor of the file is a trainable parameter of the run's adapter, with its shape;
* every LoRA / DoRA parameter of the run's adapter is in the file (full fine-tuning files
  hold only the layers they trained, so they may cover part of the model);
* the file's ``adapter_config.json``, when there is one, names the same ``fine_tune_type``
  and the same LoRA ``scale`` (the scale is not a tensor: a different one would start PPO
  from another model than the one the SFT run trained).

The reference stays the base model (the adapter switched off), as DESIGN.md has it.

A GGUF policy keeps llama.cpp's row order for Q and K (each head's rotary pairs interleaved;
it runs with traditional RoPE). An adapter trained by mlx-lm on the Hugging Face model has
Q/K output rows in Hugging Face order, so loading it onto a GGUF policy applies llama.cpp's
own permutation (``LlamaModel.permute`` in convert_hf_to_gguf.py) to the output side of the
q_proj / k_proj tensors. Adapters tui-trainer trained on a GGUF (their adapter_config.json
names a .gguf, or the embedded default) are in that order already and load as they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from tui_trainer.errors import ConfigError, ModelError, one_line

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"


def adapter_files(path: str) -> tuple[Path, Path | None]:
    """(the weights file, its adapter_config.json or None) of an adapter folder or .safetensors
    file, without reading them (cheap: the trainer checks this before the model loads)."""
    p = Path(path).expanduser()
    if p.is_dir():
        weights = p / ADAPTER_FILE
        if not weights.is_file():
            raise ModelError(f"init_adapter {path}: no {ADAPTER_FILE} in that folder (an mlx-lm adapter_path "
                             f"holds {ADAPTER_FILE} and {CONFIG_FILE})")
    elif p.is_file():
        weights = p
    else:
        raise ModelError(f"init_adapter {path}: no such file or folder")
    config = weights.parent / CONFIG_FILE
    return weights, config if config.is_file() else None


def _saved_config(path: str, config_file: Path | None) -> dict:
    if config_file is None:
        return {}
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"init_adapter {path}: unreadable {CONFIG_FILE} ({one_line(exc)})") from None
    if not isinstance(saved, dict):
        raise ModelError(f"init_adapter {path}: {CONFIG_FILE} is not a JSON object")
    return saved


def _hint(saved: dict) -> str:
    """What the adapter was trained with, as the keys to set (from its adapter_config.json)."""
    lora = saved.get("lora_parameters") or {}
    parts = [f"{k} {lora[k]}" for k in ("rank", "keys") if lora.get(k) is not None]
    if saved.get("num_layers") is not None:
        parts.insert(0, f"num_layers {saved['num_layers']}")
    return f"; it was trained with {', '.join(parts)}: set the same in adapter:" if parts else ""


def trained_on_gguf(saved: dict) -> bool:
    """Whether an adapter's adapter_config.json says it was trained on a GGUF model (llama.cpp's Q/K
    row order): its model is a .gguf file, or tui-trainer's embedded default (model null)."""
    model = saved.get("model")
    if model is None:
        return "tui_trainer" in saved
    return str(model).lower().endswith(".gguf")


def _llama_cpp_rows(x: mx.array, n_heads: int, axis: int) -> mx.array:
    """llama.cpp's Q/K permutation of the output rows along ``axis``: within each head, row
    (half h, pair i) moves to (pair i, half h), as convert_hf_to_gguf.py permutes weights."""
    x = mx.moveaxis(x, axis, 0)
    n = x.shape[0]
    y = x.reshape(n_heads, 2, n // n_heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    return mx.moveaxis(y, 0, axis)


def to_gguf_layout(weights: dict[str, mx.array], n_heads: int, n_kv_heads: int) -> dict[str, mx.array]:
    """Adapter tensors in Hugging Face row order -> llama.cpp's, for a GGUF model: the output side of
    q_proj (``n_heads``) and k_proj (``n_kv_heads``): LoRA's ``lora_b`` columns, DoRA's ``m``, a full
    fine-tune's ``weight`` / ``bias`` rows."""
    out = {}
    for name, value in weights.items():
        module, _, leaf = name.rpartition(".")
        heads = {"q_proj": n_heads, "k_proj": n_kv_heads}.get(module.rsplit(".", 1)[-1])
        if heads is not None and leaf in ("lora_b", "m", "weight", "bias"):
            value = _llama_cpp_rows(value, heads, axis=value.ndim - 1 if leaf == "lora_b" else 0)
        out[name] = value
    return out


def load_init_adapter(policy, path: str, *, gguf_policy: bool = False, log=None) -> int:
    """Load the adapter at ``path`` into ``policy`` (a tui_trainer Policy); returns the number of
    tensors loaded. ``gguf_policy``: the policy was read from a GGUF file (see the module's note on
    Q/K row order); ``log(message)`` hears when the rows are permuted. Raises ModelError /
    ConfigError (one line) when the adapter cannot be read or does not fit."""
    weights_file, config_file = adapter_files(path)
    saved = _saved_config(path, config_file)
    kind = saved.get("fine_tune_type", "lora")
    if kind != policy.adapter_type:
        raise ConfigError(f"init_adapter {path}: a {kind} adapter, but adapter.type is {policy.adapter_type}; "
                          f"set fine_tune_type: {kind}")
    scale = (saved.get("lora_parameters") or {}).get("scale")
    want = policy.lora_parameters.get("scale")
    if kind != "full" and scale is not None and want is not None and not math.isclose(float(scale), want, rel_tol=1e-6):
        raise ConfigError(f"init_adapter {path}: trained with scale {float(scale):g}, but adapter.scale is {want:g}; "
                          f"set lora_parameters: {{scale: {float(scale):g}}}")
    try:
        weights = mx.load(str(weights_file))
    except Exception as exc:  # noqa: BLE001  mlx raises RuntimeError / ValueError for a broken file
        raise ModelError(f"init_adapter {path}: cannot read {weights_file.name} ({one_line(exc)})") from None
    if not isinstance(weights, dict) or not weights:
        raise ModelError(f"init_adapter {path}: {weights_file.name} holds no tensors")
    params = dict(tree_flatten(policy.model.trainable_parameters()))
    hint = _hint(saved)
    unknown = sorted(k for k in weights if k not in params)
    if unknown:
        raise ConfigError(f"init_adapter {path}: {unknown[0]} is not a parameter of this run's adapter "
                          f"({len(unknown)} such tensor(s)){hint}")
    for name in sorted(weights):
        if tuple(weights[name].shape) != tuple(params[name].shape):
            raise ConfigError(f"init_adapter {path}: {name} has shape {tuple(weights[name].shape)}, this run's "
                              f"adapter needs {tuple(params[name].shape)}{hint}")
    if policy.adapter_type != "full":
        missing = sorted(k for k in params if k not in weights)
        if missing:
            raise ConfigError(f"init_adapter {path}: no tensor for {missing[0]} ({len(missing)} adapter "
                              f"parameter(s) missing){hint}")
    bad = [k for k, v in weights.items() if not mx.isfinite(v).all().item()]
    if bad:
        raise ModelError(f"init_adapter {path}: {bad[0]} holds NaN or inf")
    if gguf_policy and not trained_on_gguf(saved):
        args = policy.model.args
        weights = to_gguf_layout(weights, args.num_attention_heads, args.num_key_value_heads or args.num_attention_heads)
        if log is not None:
            log(f"init_adapter {path}: trained on a Hugging Face layout; q_proj / k_proj rows permuted to the GGUF's "
                "(llama.cpp) order")
    policy.model.load_weights([(k, v.astype(params[k].dtype)) for k, v in weights.items()], strict=False)
    mx.eval(policy.model.parameters())
    return len(weights)
