"""Read a llama, qwen2, qwen3 or gemma3 GGUF into an mlx-lm model and a tokenizer.

``mx.load`` reads the tensors (Q4_0 / Q4_1 / Q8_0 come back as MLX affine
quantized triples ``weight``/``scales``/``biases`` with group size 32; F16 and
F32 as plain arrays) and the metadata. The tokenizer is rebuilt from the
metadata with the ``tokenizers`` library and wrapped for mlx-lm, chat template
included. llama.cpp stores a llama's Q/K in the interleaved rotary layout, so a
llama runs with traditional RoPE; qwen2/qwen3/gemma3 are stored in Hugging Face
order (llama.cpp's NEOX RoPE, mlx-lm's default). Other architectures, and
pre-tokenizers whose split rule is not known here, are refused in one line that
says to load the Hugging Face repo of the same model instead.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from tui_trainer.errors import ModelError, one_line

_LAYER_MAP = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma 3 blocks norm four times: before and after attention, before and after the MLP.
_GEMMA3_LAYER_MAP = {
    **_LAYER_MAP, **_QK_NORMS,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# general.architecture -> (mlx-lm model module, block tensor map). llama.cpp keeps llama's Q/K rows in
# the interleaved rotary layout (traditional RoPE); qwen2, qwen3 and gemma3 are stored as in Hugging
# Face (llama.cpp runs them with NEOX RoPE, mlx-lm's default).
ARCHITECTURES = {
    "llama": ("llama", _LAYER_MAP),
    "qwen2": ("qwen2", _LAYER_MAP),
    "qwen3": ("qwen3", {**_LAYER_MAP, **_QK_NORMS}),
    "gemma3": ("gemma3_text", _GEMMA3_LAYER_MAP),
}
_TOP_MAP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Pre-tokenizer split rules named by ``tokenizer.ggml.pre`` of a BPE ("gpt2") vocabulary, as in llama.cpp's
# llama-vocab.cpp: each regex splits the pieces the previous one left (matches and the text between them
# both kept). Names not listed here are refused: guessing a split rule tokenizes text the model never saw.
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (  # llama 3's, but one digit at a time
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT_PATTERNS = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]")


class _Pre:
    def __init__(self, patterns: tuple[str, ...], *, ignore_merges: bool = False, add_bos: bool = False):
        self.patterns, self.ignore_merges, self.add_bos = patterns, ignore_merges, add_bos


_PRE_GROUPS = [
    # llama.cpp's LLAMA3 type: whole words found in the vocabulary skip the merges; BOS added by default
    (("llama3", "llama-v3", "llama-bpe", "falcon3"), _Pre((_LLAMA3_PATTERN,), ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe"), _Pre((_LLAMA3_PATTERN,))),
    (("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _Pre((_QWEN2_PATTERN,))),
    (("gpt-2", "phi-2", "mpt", "olmo", "jais"), _Pre((_GPT2_PATTERN,))),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     _Pre((r"\p{N}", _GPT2_PATTERN))),
    (("default",), _Pre(_DEFAULT_PATTERNS)),  # also a vocabulary without tokenizer.ggml.pre
]
_PRE_TOKENIZERS = {name: pre for names, pre in _PRE_GROUPS for name in names}


# ggml tensor types that ``mx.load`` reads exactly. It also converts some others (K-quants) to
# f16 on its own, but not faithfully (Q4_K comes back off by up to 0.8), so those go through
# llama.cpp's ``gguf`` package instead.
_MX_NATIVE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def tensor_types(path: str | Path) -> dict[str, int]:
    """``{tensor name: ggml type id}`` from a GGUF header; ``ModelError`` naming the file if it is not one."""
    return read_header(path)[0]


def read_header(path: str | Path) -> tuple[dict[str, int], dict[str, Any]]:
    """``({tensor name: ggml type id}, {key: value})`` from a GGUF header, the metadata holding the scalar
    and string values (arrays such as the vocabulary are skipped); ``ModelError`` naming the file if it is
    not one.

    Read by hand, not with ``gguf.GGUFReader``: the reader builds every metadata field as Python
    objects (the embedded model's 49k-token vocabulary among them) and took 5.1 s on the embedded
    model against 0.12 s here, at every model load, only to learn which reader to use (and, from the
    architecture and pre-tokenizer, whether to read the tensors at all)."""
    import struct

    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size

            def read(n):
                b = f.read(n)
                if len(b) != n:
                    raise EOFError
                return b

            def u32():
                return struct.unpack("<I", read(4))[0]

            def u64():
                return struct.unpack("<Q", read(8))[0]

            def string():
                n = u64()
                if n > size:
                    raise EOFError
                return read(n)

            def value(vtype):
                """The value (a scalar or a string), or None for an array (skipped)."""
                if vtype == 8:
                    return string().decode("utf-8", "replace")
                if vtype == 9:
                    sub, count = u32(), u64()
                    if sub in _SCALAR_SIZES:
                        if count * _SCALAR_SIZES[sub] > size:
                            raise EOFError
                        f.seek(count * _SCALAR_SIZES[sub], 1)
                    else:
                        for _ in range(count):
                            value(sub)
                    return None
                if vtype in _SCALAR_FORMATS:
                    return struct.unpack(_SCALAR_FORMATS[vtype], read(_SCALAR_SIZES[vtype]))[0]
                raise ValueError(f"unknown metadata value type {vtype}")

            magic = f.read(4)
            if magic != b"GGUF":
                raise ModelError(f"{path}: not a GGUF file (starts with {magic!r}, not b'GGUF')")
            version = u32()
            if version not in (2, 3):
                raise ModelError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            n_tensors, n_kv = u64(), u64()
            meta = {}
            for _ in range(n_kv):
                key = string().decode("utf-8", "replace")
                v = value(u32())
                if v is not None:
                    meta[key] = v
            types = {}
            for _ in range(n_tensors):
                name = string().decode("utf-8", "replace")
                n_dims = u32()
                f.seek(8 * n_dims, 1)
                types[name] = u32()
                u64()
            return types, meta
    except EOFError:
        raise ModelError(f"{path}: truncated or corrupt GGUF file (header ends early)") from None
    except (ValueError, struct.error) as exc:
        raise ModelError(f"{path}: corrupt GGUF file ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_gguf(path: str | Path, types: dict[str, int] | None = None) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Tensors and metadata of a GGUF file; a ``ModelError`` naming the file if it cannot be read.

    ``mx.load`` reads F32/F16/Q4_0/Q4_1/Q8_0 tensors natively (Q4/Q8 as MLX affine
    triples). A file with other tensor types (K-quants, Q5_*, BF16, ...) is read
    with llama.cpp's ``gguf`` package instead, every tensor dequantized to f32 by
    its reference code. ``types``: the header's tensor types, when already read.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if types is None:
        types = tensor_types(path)
    if not types:
        raise ModelError(f"{path}: GGUF file holds no tensors")
    if not set(types.values()) <= set(_MX_NATIVE_TYPES):
        return _read_with_gguf_package(path)
    try:
        weights, meta = mx.load(str(path), return_metadata=True)
    except Exception as exc:  # mx.load raises RuntimeError/ValueError with multi-line text
        raise ModelError(f"{path}: not a readable GGUF file ({one_line(exc)})") from None
    return weights, meta


def _read_with_gguf_package(path: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    try:
        return _gguf_package_tensors(path)
    except ModelError:
        raise
    except Exception as exc:  # the reader raises ValueError/NotImplementedError/... on bad or unknown data
        raise ModelError(f"{path}: not a readable GGUF file ({one_line(exc)})") from None


def _gguf_package_tensors(path: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T, GGUFValueType as V

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or not field.types:
            continue
        if field.types[0] == V.ARRAY and field.types[-1] != V.STRING:
            meta[key] = list(field.contents())
        else:
            meta[key] = field.contents()
    weights = {}
    for t in reader.tensors:
        if t.tensor_type in (T.F32, T.F16):
            arr = np.asarray(t.data)
        else:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = mx.array(arr.reshape(tuple(int(d) for d in reversed(t.shape))))
    return weights, meta


def _meta_scalar(meta: dict, key: str, default=None):
    if key not in meta:
        return default
    v = meta[key]
    if isinstance(v, mx.array):
        return v.item() if v.size == 1 else v.tolist()
    return v


def model_args(meta: dict, weights: dict) -> dict:
    """mlx-lm ``ModelArgs`` (as a dict) for the GGUF's architecture, read as llama.cpp reads it."""
    arch = _meta_scalar(meta, "general.architecture")
    check_architecture(meta)

    def g(key, default=None):
        return _meta_scalar(meta, f"{arch}.{key}", default)

    def req(key):
        value = g(key)
        if value is None:
            raise ModelError(f"GGUF metadata lacks {arch}.{key}")
        return int(value)

    n_heads = req("attention.head_count")
    hidden = req("embedding_length")
    vocab = g("vocab_size", len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else None)
    if vocab is None:
        raise ModelError(f"GGUF metadata lacks tokenizer.ggml.tokens (and {arch}.vocab_size)")
    head_dim = int(g("attention.key_length", hidden // n_heads))
    if int(g("attention.value_length", head_dim)) != head_dim:
        raise ModelError(f"{arch}.attention.value_length differs from key_length: not supported")
    args = {
        "model_type": ARCHITECTURES[arch][0],
        "hidden_size": hidden,
        "num_hidden_layers": req("block_count"),
        "intermediate_size": req("feed_forward_length"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g("attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": int(vocab),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(g("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in weights,
        "head_dim": head_dim,
    }
    n_rot = g("rope.dimension_count")
    if n_rot is not None and int(n_rot) != head_dim:
        raise ModelError(f"partial rotary embeddings ({arch}.rope.dimension_count={int(n_rot)}) are not supported")
    scaling_type = g("rope.scaling.type", "none")
    if scaling_type == "linear":
        args["rope_scaling"] = {"type": "linear", "factor": float(g("rope.scaling.factor", 1.0))}
    elif scaling_type != "none":
        raise ModelError(f"RoPE scaling {scaling_type!r} ({arch}.rope.scaling.type) is not supported (linear only)")
    if arch == "llama":
        args["rope_traditional"] = True
        if head_dim == hidden // n_heads:
            del args["head_dim"]  # mlx-lm's llama derives it
    elif arch == "qwen2":
        if head_dim != hidden // n_heads:  # mlx-lm's qwen2 derives head_dim from the hidden size
            raise ModelError(f"qwen2 with head size {head_dim} != embedding_length / head_count is not supported")
    elif arch == "gemma3":
        window = g("attention.sliding_window")
        if not window:  # llama.cpp then runs every layer global and soft-caps the logits: no real Gemma 3 does
            raise ModelError("GGUF metadata lacks gemma3.attention.sliding_window")
        pattern = g("attention.sliding_window_pattern", 6)
        if not isinstance(pattern, int) or pattern < 1:
            raise ModelError(f"gemma3.attention.sliding_window_pattern {pattern!r} is not supported (one period)")
        if pattern > args["num_hidden_layers"]:
            raise ModelError(f"gemma3 with fewer layers ({args['num_hidden_layers']}) than its sliding-window "
                             f"period ({pattern}) is not supported")
        args.update({
            "sliding_window": int(window),
            "sliding_window_pattern": pattern,
            "rope_local_base_freq": float(g("rope.freq_base_swa", 10000.0)),
            # llama.cpp scales queries by 1/sqrt(head size), except for the 62-layer (27B) model, whose
            # query_pre_attn_scalar is hidden / heads (and no GGUF key says so)
            "query_pre_attn_scalar": float(hidden / n_heads if args["num_hidden_layers"] == 62 else head_dim),
        })
    return args


def check_architecture(meta: dict) -> None:
    """``ModelError`` (one line, naming what to use instead) unless the GGUF's architecture and
    tokenizer are ones this loader reproduces exactly."""
    arch = _meta_scalar(meta, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelError(f"GGUF architecture {arch!r} is not supported (only {', '.join(ARCHITECTURES)}); "
                         f"{_use_instead(meta)}")
    kind = _meta_scalar(meta, "tokenizer.ggml.model")
    if kind not in (None, "gpt2", "llama"):
        raise ModelError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 or llama); {_use_instead(meta)}")
    pre = _meta_scalar(meta, "tokenizer.ggml.pre")
    if kind == "gpt2" and (pre or "default") not in _PRE_TOKENIZERS:
        raise ModelError(f"GGUF tokenizer.ggml.pre {pre!r} is not supported; {_use_instead(meta)}")


def _use_instead(meta: dict) -> str:
    """What to load instead of a GGUF we refuse: the Hugging Face repo of the same model, named as
    precisely as the file's metadata allows."""
    advice = "load the Hugging Face repo of the same model instead"
    for key in ("general.source.huggingface.repository", "general.source.url", "general.source.repo_url"):
        repo = _hf_repo_id(_meta_scalar(meta, key))
        if repo:
            return f"{advice} (--model {repo})"
    base = _hf_repo_id(_meta_scalar(meta, "general.base_model.0.repo_url"))
    name = _meta_scalar(meta, "general.name")
    if base:
        return f"{advice} (--model ORG/NAME; this GGUF says it derives from {base})"
    if name:
        return f"{advice} (--model ORG/NAME, the repo of {str(name)!r})"
    return f"{advice} (--model ORG/NAME)"


def _hf_repo_id(value) -> str | None:
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"(?:(?:https?://)?(?:www\.)?(?:huggingface\.co|hf\.co)/)?([\w.-]+/[\w.-]+?)/?", value.strip())
    return m.group(1) if m else None


def rename(weights: dict[str, mx.array], arch: str = "llama") -> dict[str, mx.array]:
    """GGUF tensor names -> mlx-lm names of ``arch`` (suffixes weight/scales/biases kept; bias -> bias)."""
    layer_map = ARCHITECTURES[arch][1]
    out = {}
    for name, value in weights.items():
        if name.startswith("rope_freqs"):
            continue
        m = re.match(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$", name)
        if m:
            layer, part, suffix = m.groups()
            if part not in layer_map:
                raise ModelError(f"unexpected GGUF tensor {name}")
            out[f"model.layers.{layer}.{layer_map[part]}.{suffix}"] = value
            continue
        m = re.match(r"(\w+)\.(weight|scales|biases)$", name)
        if not m or m.group(1) not in _TOP_MAP:
            raise ModelError(f"unexpected GGUF tensor {name}")
        out[f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"] = value
    if arch == "gemma3":
        # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's converter stores weight + 1 (its norms are
        # plain), so take the 1 back off. Exact in f32 for weights in [0.5, 2] (Sterbenz), and the 1 that
        # mlx-lm adds back gives the stored value again.
        out = {k: (v.astype(mx.float32) - 1.0 if k.endswith("norm.weight") else v) for k, v in out.items()}
    return out


def quantization_of(weights: dict[str, mx.array], prefix: str) -> tuple[int, int] | None:
    """(group_size, bits) of a quantized triple under ``prefix``, None if plain."""
    scales = weights.get(f"{prefix}.scales")
    if scales is None:
        return None
    w = weights[f"{prefix}.weight"]
    group_size = 32  # GGUF block size for Q4_0/Q4_1/Q8_0
    bits = (w.shape[-1] * 32) // (scales.shape[-1] * group_size)
    return group_size, bits


def dequantize_all(weights: dict[str, mx.array], dtype=mx.float32) -> dict[str, mx.array]:
    out = {}
    for name, value in weights.items():
        if name.endswith((".scales", ".biases")):
            continue
        prefix = name.rsplit(".", 1)[0]
        q = quantization_of(weights, prefix) if name.endswith(".weight") else None
        if q:
            gs, bits = q
            # scales/biases are f16 in the file; dequantizing in f16 would round every weight to
            # f16 (llama.cpp computes d * q + m in f32), so widen them first.
            value = mx.dequantize(value, weights[f"{prefix}.scales"].astype(mx.float32),
                                  weights[f"{prefix}.biases"].astype(mx.float32), gs, bits)
        out[name] = value.astype(dtype)
    return out


def build_model(meta: dict, weights: dict[str, mx.array], *, keep_quantized: bool, dtype=mx.float32) -> nn.Module:
    import importlib

    arch = _meta_scalar(meta, "general.architecture")
    module = importlib.import_module(f"mlx_lm.models.{ARCHITECTURES.get(arch, ('llama',))[0]}")
    args = module.ModelArgs.from_dict(model_args(meta, weights))
    rope_factors = weights.get("rope_freqs.weight")
    if rope_factors is not None and arch != "llama":
        raise ModelError(f"rope_freqs.weight (RoPE frequency factors) in a {arch} GGUF is not supported")
    weights = rename(weights, arch)
    model = _Gemma3(args) if arch == "gemma3" else module.Model(args)
    weights = model.sanitize(weights)  # gemma3: drops lm_head when the embeddings are tied
    if rope_factors is not None:
        _use_rope_factors(model, args, rope_factors)
    if keep_quantized:
        def predicate(path, module):
            q = quantization_of(weights, path)
            if q is None or not hasattr(module, "to_quantized"):
                return False
            return {"group_size": q[0], "bits": q[1]}

        nn.quantize(model, class_predicate=predicate)
        weights = {k: (v.astype(dtype) if k.endswith((".scales", ".biases")) or
                       v.dtype in (mx.float16, mx.bfloat16, mx.float32) else v)
                   for k, v in weights.items()}
    else:
        weights = dequantize_all(weights, dtype)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        text = " ".join(str(exc).split())  # mlx lists the missing/unexpected names on the following lines
        raise ModelError(f"GGUF tensors do not fit a {arch} model: {text[:300]}") from None
    mx.eval(model.parameters())
    model.eval()
    return model


@functools.lru_cache(maxsize=1)
def _gemma3_class():
    from mlx_lm.models import gemma3_text

    class Gemma3Backbone(gemma3_text.Gemma3Model):
        """mlx-lm's Gemma 3 body with the sqrt(hidden) embedding scale in f32, as llama.cpp applies it.

        mlx-lm rounds the scale to bf16 (as transformers does for a bf16 checkpoint): 34.0 instead of
        33.94 on Gemma 3 1B, which put a tiny random Gemma's logits 4x further from llama.cpp's."""

        def __call__(self, inputs, cache=None, input_embeddings=None):
            if input_embeddings is None:
                scale = self.args.hidden_size ** 0.5
                rounded = mx.array(scale, mx.bfloat16).item()  # what the parent multiplies by
                input_embeddings = self.embed_tokens(inputs) * (scale / rounded)
            return super().__call__(inputs, cache, input_embeddings)

    class Gemma3(gemma3_text.Model):
        def __init__(self, args):
            super().__init__(args)
            self.model = Gemma3Backbone(args)

    return Gemma3


def _Gemma3(args):
    """mlx-lm's Gemma 3 (text) model as llama.cpp computes it (see Gemma3Backbone)."""
    return _gemma3_class()(args)


class FactorRoPE(nn.Module):
    """Traditional RoPE with llama.cpp's per-pair frequency factors (the ``rope_freqs.weight`` tensor of
    Llama 3.1+ GGUFs): pair i turns at ``pos / (base**(2i/d) * factor[i])``, as in ggml's rope_ext."""

    def __init__(self, dims: int, base: float, factors: mx.array, scale: float = 1.0):
        super().__init__()
        self.dims = dims
        periods = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
        self._freqs = periods * factors.astype(mx.float32).reshape(-1) / scale  # not a parameter (leading _)

    def __call__(self, x, offset=0):
        return mx.fast.rope(x, self.dims, traditional=True, base=None, scale=1.0, offset=offset, freqs=self._freqs)


def _use_rope_factors(model: nn.Module, args, factors: mx.array) -> None:
    head_dim = args.head_dim or args.hidden_size // args.num_attention_heads
    if factors.size != head_dim // 2:
        raise ModelError(f"rope_freqs.weight has {factors.size} factors, expected {head_dim // 2}")
    scale = 1.0
    if args.rope_scaling and args.rope_scaling.get("type") == "linear":
        scale = 1.0 / float(args.rope_scaling["factor"])
    for layer in model.model.layers:
        layer.self_attn.rope = FactorRoPE(head_dim, args.rope_theta, factors, scale)


# --------------------------------------------------------------------------- tokenizer


def _spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Merges for a SentencePiece vocabulary, ordered by the merged piece's score."""
    pieces = sorted(vocab.items(), key=lambda kv: kv[1])
    merges = []
    for piece, idx in pieces:
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right, scores[idx]))
        local.sort()
        merges.extend((s, l, r) for _, _, l, r, s in local)
    merges.sort(key=lambda m: -m[0])  # stable: ties keep vocab order
    return [(l, r) for _, l, r in merges]


def build_tokenizer(meta: dict):
    """A mlx-lm ``TokenizerWrapper`` rebuilt from GGUF metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    kind = _meta_scalar(meta, "tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelError("GGUF has no tokenizer.ggml.tokens: cannot rebuild its tokenizer")
    tokens = list(tokens)
    types = _meta_scalar(meta, "tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}

    def tok_id(key):
        v = _meta_scalar(meta, f"tokenizer.ggml.{key}")
        return int(v) if v is not None else None

    bos, eos, unk, pad = tok_id("bos_token_id"), tok_id("eos_token_id"), tok_id("unknown_token_id"), tok_id("padding_token_id")
    add_bos = bool(_meta_scalar(meta, "tokenizer.ggml.add_bos_token", True))  # gpt2: set below

    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        pre = _PRE_TOKENIZERS.get(_meta_scalar(meta, "tokenizer.ggml.pre") or "default")
        if pre is None:
            check_architecture(meta)  # raises, naming what to use instead
        add_bos = bool(_meta_scalar(meta, "tokenizer.ggml.add_bos_token", pre.add_bos))
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False, ignore_merges=pre.ignore_merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(_tokenizer_regex(p), behavior="isolated") for p in pre.patterns]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        scores = _meta_scalar(meta, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        unk_tok = tokens[unk] if unk is not None else None
        tok = Tokenizer(models.BPE(vocab, _spm_merges(vocab, scores), unk_token=unk_tok,
                                   fuse_unk=True, byte_fallback=True))
        # llama.cpp prepends a space unless tokenizer.ggml.add_space_prefix says otherwise
        space_prefix = bool(_meta_scalar(meta, "tokenizer.ggml.add_space_prefix", True))
        replace = normalizers.Replace(" ", "▁")
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if space_prefix else replace
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] if space_prefix else steps)
    else:
        raise ModelError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 or llama)")

    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    if special:
        tok.add_special_tokens(special)
    if add_bos and bos is not None:
        b = tokens[bos]
        tok.post_processor = processors.TemplateProcessing(single=f"{b} $A", pair=f"{b} $A {b} $B",
                                                           special_tokens=[(b, bos)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens[bos] if bos is not None else None,
        eos_token=tokens[eos] if eos is not None else None,
        unk_token=tokens[unk] if unk is not None else None,
        pad_token=tokens[pad] if pad is not None else (tokens[eos] if eos is not None else None),
        chat_template=_meta_scalar(meta, "tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
    eos_ids = {eos} if eos is not None else set()
    eot = tok_id("eot_token_id")
    if eot is not None:
        eos_ids.add(eot)
    return TokenizerWrapper(hf, eos_token_ids=eos_ids)


def _tokenizer_regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def load_gguf(path: str | Path, *, keep_quantized: bool = False, dtype=mx.float32):
    """``(model, tokenizer)`` from a llama, qwen2, qwen3 or gemma3 GGUF; every failure (an architecture or
    tokenizer we do not reproduce exactly included, refused before the tensors are read) is a one-line
    ``ModelError`` naming the file."""
    types, header = read_header(path)
    try:
        check_architecture(header)
        vision = next((name for name in types if name.startswith(("v.", "mm."))), None)
        if vision is not None:  # Ollama's gemma3 files carry the vision tower in the same file
            raise ModelError(f"GGUF holds a vision tower (tensor {vision}), which is not supported; "
                             f"{_use_instead(header)}")
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    weights, meta = read_gguf(path, types)
    try:
        model = build_model(meta, weights, keep_quantized=keep_quantized, dtype=dtype)
        tokenizer = build_tokenizer(meta)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # metadata missing or of the wrong type
        raise ModelError(f"{path}: malformed GGUF metadata ({one_line(exc)})") from None
    return model, tokenizer
