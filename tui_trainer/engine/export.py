"""Export a checkpoint for llama.cpp, Ollama and mlx-lm: ``tui-trainer export``.

* ``gguf-lora``: a llama.cpp LoRA adapter GGUF, written as llama.cpp's convert_lora_to_gguf.py
  writes one: ``general.type=adapter``, ``adapter.type=lora``, ``adapter.lora.alpha``, tensors
  ``blk.N.<name>.weight.lora_a`` / ``.lora_b``. mlx-lm computes ``y + s * (x @ A) @ B`` with A
  (in, r) and B (r, out); llama.cpp stores A as (r, in) and B as (out, r) (numpy order, PEFT's
  ``lora_A`` / ``lora_B``) and scales ``B @ A`` by ``alpha / r``: so A and B are transposed and
  ``alpha = s * r``. For a GGUF base the adapter has that file's row order already; for an mlx-lm
  base (llama, qwen2, qwen3, gemma3) it is written for llama.cpp's conversion of the same model.
* ``gguf``: the fused model written with the base GGUF's own metadata (tokenizer and chat
  template included) and tensor names, as F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1 or Q4_0, or each
  tensor in the base's own type (quantized by the ``gguf`` package, llama.cpp's reference code),
  plus a ``Modelfile`` for ``ollama create``.
* ``mlx``: the fused model as an mlx-lm folder (as ``mlx_lm.fuse`` writes one). From a llama
  GGUF the Q/K rows go back to Hugging Face order (the inverse of llama.cpp's permutation) and
  the model runs with mlx-lm's default (non-traditional) RoPE; the tokenizer rebuilt from the
  GGUF is saved by transformers' ``save_pretrained`` (tokenizer.json, tokenizer_config.json and the
  chat template, which recent transformers writes to chat_template.jinja).

Every output is written under a temporary name next to it and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from tui_trainer.errors import ConfigError, ModelError, one_line
from tui_trainer.fileio import remove_path, replace_path

FORMATS = ("gguf-lora", "gguf", "mlx")
# --outtype per format; "base": each tensor in the base GGUF's own type where the gguf package can write it
OUTTYPES = {
    "gguf-lora": ("f32", "f16", "bf16", "q8_0"),
    "gguf": ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "base"),
    "mlx": ("f32", "f16", "bf16", "q8_0"),
}
DEFAULT_OUTTYPE = {"gguf-lora": "f32", "gguf": "f16", "mlx": "f16"}
GGUF_FILE = "model.gguf"

Progress = Callable[[str, int, int], None]


def _quiet(phase: str, done: int, total: int) -> None:
    pass


@dataclasses.dataclass
class Source:
    checkpoint: Path
    adapter_config: dict
    model: str | None  # the base as the checkpoint names it (None: the embedded default)
    kind: str  # "gguf" | "mlx"
    path: Path  # the base's local file or folder


# --------------------------------------------------------------------------- what to export


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run directory's latest checkpoint; ModelError (one line) otherwise."""
    from tui_trainer.engine.checkpoints import latest_checkpoint

    p = Path(path).expanduser()
    if (p / "adapters.safetensors").is_file():
        return p
    if not p.is_dir():
        raise ModelError(f"{path}: no such run directory or checkpoint")
    latest = latest_checkpoint(p)
    if latest is None:
        raise ModelError(f"{path}: neither a checkpoint (no adapters.safetensors) nor a run directory with "
                         f"checkpoints/")
    return latest


def source(path: str | Path) -> Source:
    """The checkpoint behind ``path`` and its base model, checked: a base that is missing, or not the
    one the checkpoint was trained on (its recorded fingerprint differs), is a ModelError naming it."""
    from tui_trainer.engine.models import base_fingerprint, locate_model

    ckpt = find_checkpoint(path)
    try:
        config = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{ckpt}: unreadable adapter_config.json ({one_line(exc)})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{ckpt}: adapter_config.json is not a JSON object")
    model = config.get("model")
    if model is None:  # checkpoints written before the base was recorded: the run's config.yaml names it
        model = _run_config_model(ckpt)
    shown = model or "the embedded default model"
    try:
        kind, target = locate_model(model)
    except ModelError as exc:
        raise ModelError(f"{ckpt}: the base model is missing: {exc}") from None
    recorded = (config.get("tui_trainer") or {}).get("base")
    if isinstance(recorded, dict):
        now = base_fingerprint(model)
        if now != recorded:
            what = (f"{recorded.get('size')} bytes then, {now.get('size')} now" if now.get("size") != recorded.get("size")
                    else "same size, other content")
            raise ModelError(f"{ckpt}: the base model {shown} has changed since this checkpoint was written "
                             f"({what}); export needs the model it was trained on")
    return Source(ckpt, config, model, kind, target)


def _run_config_model(ckpt: Path) -> str | None:
    import yaml

    cfg_file = ckpt.parent.parent / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return cfg.get("model") if isinstance(cfg, dict) else None


def load_adapted(src: Source):
    """``(model, tokenizer)``: the base in f32 with the checkpoint's adapter on it (mlx-lm's
    ``load_adapters``, which reads adapter_config.json as ``mlx_lm --adapter-path`` does)."""
    from mlx_lm.tuner.utils import load_adapters

    from tui_trainer.engine.models import load_policy

    model, tokenizer = load_policy(src.model, quantized=False)
    try:
        load_adapters(model, str(src.checkpoint))
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError, OSError) as exc:
        raise ModelError(f"{src.checkpoint}: the adapter does not fit the base model "
                         f"{src.model or 'the embedded default'} (has the base changed?): {one_line(exc)}") from None
    mx.eval(model.parameters())
    model.eval()
    return model, tokenizer


def fuse(model) -> None:
    """Merge every adapter layer into its base layer, in place (as ``mlx_lm.fuse`` does), and leave no
    layer quantized (a quantized mlx-lm base loaded on a GPU keeps its quantized layers): f32 throughout."""
    from tui_trainer.engine.models import _dequantize_model

    fused = [(n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    _dequantize_model(model)
    mx.eval(model.parameters())


# --------------------------------------------------------------------------- output under a temporary name


def _prepare(out: Path, force: bool) -> Path:
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another -o or add --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    remove_path(tmp)
    return tmp


# --------------------------------------------------------------------------- GGUF tensors


def _ggml_type(outtype: str, value: np.ndarray, base_type: int | None = None):
    """The tensor type, as llama.cpp's converter picks it: 1-D tensors (norms, biases) stay F32; the
    block types need rows of whole 32-blocks (else F16); ``base``: the base tensor's type (``base_type``)
    where the gguf package can write it (not K-quants), else F16."""
    from gguf import GGMLQuantizationType as T

    if value.ndim < 2:
        return T.F32
    writable = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q5_1": T.Q5_1, "q5_0": T.Q5_0,
                "q4_1": T.Q4_1, "q4_0": T.Q4_0}
    if outtype == "base":
        qtype = T(base_type) if base_type is not None and base_type in set(writable.values()) else T.F16
    else:
        qtype = writable[outtype]
    if qtype not in (T.F32, T.F16, T.BF16) and value.shape[-1] % 32 != 0:
        return T.F16
    return qtype


def _add_tensor(writer, name: str, value: np.ndarray, outtype: str, base_type: int | None = None) -> None:
    from gguf import GGMLQuantizationType as T, quants

    value = np.ascontiguousarray(value, dtype=np.float32)
    qtype = _ggml_type(outtype, value, base_type)
    if qtype == T.F32:
        writer.add_tensor(name, value)
    elif qtype == T.F16:
        writer.add_tensor(name, value.astype(np.float16))
    else:
        data = quants.quantize(value, qtype)
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)


def _write_gguf(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_names(arch: str) -> dict[str, str]:
    """mlx-lm module path inside a block -> GGUF tensor stem, for ``arch``."""
    from tui_trainer.engine.gguf import ARCHITECTURES

    return {mlx_name: gguf_name for gguf_name, mlx_name in ARCHITECTURES[arch][1].items()}


def _gguf_tensor_name(arch: str, name: str) -> str | None:
    """GGUF name of an mlx-lm parameter (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``)."""
    from tui_trainer.engine.gguf import _TOP_MAP

    parts = name.split(".")
    if name.startswith("model.layers.") and len(parts) > 4:
        module, leaf = ".".join(parts[3:-1]), parts[-1]
        stem = _gguf_names(arch).get(module)
        return f"blk.{parts[2]}.{stem}.{leaf}" if stem else None
    top = {v: k for k, v in _TOP_MAP.items()}.get(".".join(parts[:-1]))
    return f"{top}.{parts[-1]}" if top else None


def _base_reader(src: Source):
    import gguf

    try:
        return gguf.GGUFReader(str(src.path))
    except Exception as exc:  # noqa: BLE001  the reader raises many types on a broken file
        raise ModelError(f"{src.path}: not a readable GGUF file ({one_line(exc)})") from None


def _architecture(src: Source) -> str:
    from tui_trainer.engine.gguf import _meta_scalar, read_header

    return str(_meta_scalar(read_header(src.path)[1], "general.architecture"))


def _need_gguf_base(src: Source, fmt: str) -> None:
    if src.kind != "gguf":
        raise ModelError(f"--to {fmt} needs a GGUF base, and this checkpoint's base {src.model} is an mlx-lm "
                         f"model: use --to mlx (then llama.cpp's convert_hf_to_gguf.py on that folder), or "
                         f"--to gguf-lora for llama.cpp's conversion of the base")


# mlx-lm model_type -> the llama.cpp architecture its Hugging Face model converts to
_MLX_TO_GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}


def export_gguf_lora(src: Source, out: Path, *, outtype: str = "f32", force: bool = False,
                     progress: Progress = _quiet) -> Path:
    """A llama.cpp LoRA adapter. For a GGUF base the adapter is in that file's row order already; for an
    mlx-lm base it is for llama.cpp's conversion of the same model (convert_hf_to_gguf.py), which for a
    llama permutes the Q/K rows: lora_b gets the same permutation (as convert_lora_to_gguf.py does)."""
    import gguf

    from tui_trainer.engine.adapters import to_gguf_layout
    from tui_trainer.engine.policy import ADAPTER_TYPES

    kind = src.adapter_config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise ModelError(f"a {kind} adapter has no llama.cpp LoRA form; use --to gguf (the merged model) or --to mlx")
    progress("loading the model and adapter", 0, 1)
    model, _ = load_adapted(src)
    if src.kind == "gguf":
        arch, permute = _architecture(src), False
    else:
        model_type = getattr(model.args, "model_type", None)
        arch = _MLX_TO_GGUF_ARCH.get(model_type)
        if arch is None:
            raise ModelError(f"--to gguf-lora cannot write a {model_type} model's adapter (only "
                             f"{', '.join(_MLX_TO_GGUF_ARCH)}); use --to mlx")
        permute = arch == "llama"
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)]
    if not layers:
        raise ModelError(f"{src.checkpoint}: the adapter has no LoRA layers")
    args = model.args
    n_heads = args.num_attention_heads
    n_kv = getattr(args, "num_key_value_heads", None) or n_heads
    tmp = _prepare(out, force)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        rank = None
        for i, (name, layer) in enumerate(layers):
            stem = _gguf_tensor_name(arch, f"{name}.weight")
            if stem is None or not hasattr(layer, "lora_a"):
                raise ModelError(f"the adapter on {name} has no llama.cpp tensor name; use --to gguf or --to mlx")
            b = layer.lora_b
            if permute:
                b = to_gguf_layout({f"{name}.lora_b": b}, n_heads, n_kv)[f"{name}.lora_b"]
            a, b = np.array(layer.lora_a.astype(mx.float32)), np.array(b.astype(mx.float32))
            if rank is None:
                rank, scale = a.shape[1], float(layer.scale)
            elif a.shape[1] != rank or float(layer.scale) != scale:
                raise ModelError("the adapter's layers differ in rank or scale, which one llama.cpp adapter "
                                 "cannot hold; use --to gguf or --to mlx")
            _add_tensor(writer, f"{stem}.lora_a", a.T, outtype)  # (r, in): PEFT's lora_A
            _add_tensor(writer, f"{stem}.lora_b", b.T, outtype)  # (out, r): PEFT's lora_B
            progress("writing LoRA tensors", i + 1, len(layers))
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, scale * rank)  # llama.cpp scales by alpha / r
        _write_gguf(writer)
        replace_path(tmp, out)
    finally:
        remove_path(tmp)
    return out


def export_gguf(src: Source, out: Path, *, outtype: str = "f16", force: bool = False,
                progress: Progress = _quiet) -> Path:
    """The fused model as ``out/model.gguf`` + ``out/Modelfile``."""
    import gguf
    from gguf import GGUFValueType

    _need_gguf_base(src, "gguf")
    arch = _architecture(src)
    progress("loading the model and adapter", 0, 1)
    model, _ = load_adapted(src)
    fuse(model)
    params = dict(tree_flatten(model.parameters()))
    if arch == "gemma3":  # the GGUF stores Gemma's norm weights + 1 (see gguf.rename)
        params = {k: (v + 1.0 if k.endswith("norm.weight") else v) for k, v in params.items()}
    by_gguf = {}
    for name, value in params.items():
        g = _gguf_tensor_name(arch, name)
        if g is None:
            raise ModelError(f"GGUF export cannot name the tensor {name} of a {arch} model; use --to mlx")
        by_gguf[g] = value
    reader = _base_reader(src)
    base_names = [t.name for t in reader.tensors]
    extra = sorted(set(by_gguf) - set(base_names))
    if extra:
        raise ModelError(f"GGUF export: {extra[0]} is not a tensor of the base GGUF; use --to mlx")
    F = gguf.LlamaFileType
    file_type = {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
                 "q5_1": F.MOSTLY_Q5_1, "q5_0": F.MOSTLY_Q5_0, "q4_1": F.MOSTLY_Q4_1, "q4_0": F.MOSTLY_Q4_0}.get(outtype)
    tmp = _prepare(out, force)
    try:
        tmp.mkdir()
        writer = gguf.GGUFWriter(str(tmp / GGUF_FILE), arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment") or (
                    key == "general.file_type" and file_type is not None):  # "base": the base's file type stays
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        if file_type is not None:
            writer.add_file_type(file_type)
        for i, t in enumerate(reader.tensors):
            if t.name in by_gguf:
                value = np.array(by_gguf[t.name].astype(mx.float32))
            elif t.name.startswith("rope_freqs") and t.tensor_type == gguf.GGMLQuantizationType.F32:
                # RoPE frequency factors: not a model parameter, kept as the base has them
                value = np.asarray(t.data, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
            else:
                raise ModelError(f"GGUF export: the base's tensor {t.name} has no counterpart in the model; "
                                 f"use --to mlx")
            _add_tensor(writer, t.name, value, outtype, int(t.tensor_type))
            progress("writing tensors", i + 1, len(base_names))
        _write_gguf(writer)
        (tmp / "Modelfile").write_text(modelfile(), encoding="utf-8")
        replace_path(tmp, out)
    finally:
        remove_path(tmp)
    return out


def modelfile(gguf_name: str = GGUF_FILE) -> str:
    return (f"# ollama create NAME -f Modelfile  (run in this folder)\n"
            f"# No TEMPLATE line: Ollama takes the chat template stored in {gguf_name}.\n"
            f"FROM ./{gguf_name}\n")


# --------------------------------------------------------------------------- mlx-lm folder


def _hf_rows(x: mx.array, n_heads: int) -> mx.array:
    """The inverse of llama.cpp's Q/K row permutation (adapters._llama_cpp_rows) on axis 0."""
    n = x.shape[0]
    return x.reshape(n_heads, n // n_heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


# ModelArgs fields that model_args() fills with floats where Hugging Face's config classes want ints
_INT_IN_HF_CONFIG = ("query_pre_attn_scalar",)


def export_mlx(src: Source, out: Path, *, outtype: str = "f16", force: bool = False,
               progress: Progress = _quiet) -> Path:
    from mlx_lm.utils import quantize_model, save_config, save_model

    from tui_trainer.engine.gguf import FactorRoPE

    progress("loading the model and adapter", 0, 1)
    model, tokenizer = load_adapted(src)
    fuse(model)
    progress("fusing", 1, 1)
    if src.kind == "gguf":
        if any(isinstance(m, FactorRoPE) for _, m in model.named_modules()):
            raise ModelError("the base GGUF has RoPE frequency factors (rope_freqs.weight), which an mlx-lm config "
                             "cannot name; export --to gguf instead")
        config = {k: v for k, v in dataclasses.asdict(model.args).items() if v is not None}
        for k in _INT_IN_HF_CONFIG:  # transformers' config classes (which mlx_lm.load reads too) check the type
            if isinstance(config.get(k), float) and config[k].is_integer():
                config[k] = int(config[k])
        if config.get("rope_traditional"):  # a llama GGUF: Q/K rows back to Hugging Face order
            args = model.args
            heads = {"q_proj": args.num_attention_heads,
                     "k_proj": args.num_key_value_heads or args.num_attention_heads}
            fixed = []
            for name, value in tree_flatten(model.parameters()):
                parts = name.split(".")
                if len(parts) > 2 and parts[-2] in heads and parts[-1] in ("weight", "bias"):
                    fixed.append((name, _hf_rows(value, heads[parts[-2]])))
            model.load_weights(fixed, strict=False)
            config["rope_traditional"] = False
        eos = sorted(tokenizer.eos_token_ids)
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None:
            config["bos_token_id"] = bos
    else:
        config = json.loads((src.path / "config.json").read_text(encoding="utf-8"))
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    dtype = {"f32": mx.float32, "f16": mx.float16, "bf16": mx.bfloat16, "q8_0": mx.float16}[outtype]
    model.set_dtype(dtype)
    if outtype == "q8_0":  # mlx's affine 8-bit, groups of 32 (as GGUF's Q8_0 blocks)
        model, config = quantize_model(model, config, 32, 8)
    config["torch_dtype"] = {"f32": "float32", "bf16": "bfloat16"}.get(outtype, "float16")
    tmp = _prepare(out, force)
    try:
        tmp.mkdir()
        progress("writing the model", 0, 1)
        save_model(tmp, model, donate_model=False)
        save_config(config, config_path=tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        if src.kind == "mlx":  # as mlx_lm.fuse: the base's generation settings and custom code travel along
            for extra in [*src.path.glob("*.py"), src.path / "generation_config.json"]:
                if extra.is_file():
                    shutil.copy(extra, tmp)
        progress("writing the model", 1, 1)
        replace_path(tmp, out)
    finally:
        remove_path(tmp)
    return out


def export(path: str | Path, fmt: str, out: str | Path, *, outtype: str | None = None, force: bool = False,
           progress: Progress = _quiet) -> Path:
    """Export the checkpoint at ``path`` (or a run directory's latest) as ``fmt`` to ``out``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--to {fmt!r}: choose one of {', '.join(FORMATS)}")
    outtype = outtype or DEFAULT_OUTTYPE[fmt]
    if outtype not in OUTTYPES[fmt]:
        raise ConfigError(f"--outtype {outtype} is not available --to {fmt}: choose one of {', '.join(OUTTYPES[fmt])}")
    out = Path(out).expanduser()
    if out.exists() and not force:  # before the model loads
        raise ConfigError(f"{out} already exists; choose another -o or add --force to replace it")
    src = source(path)
    fn = {"gguf-lora": export_gguf_lora, "gguf": export_gguf, "mlx": export_mlx}[fmt]
    return fn(src, out, outtype=outtype, force=force, progress=progress)
