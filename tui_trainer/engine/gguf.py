"""Read a llama-architecture GGUF into an mlx-lm model and a tokenizer.

``mx.load`` reads the tensors (Q4_0 / Q4_1 / Q8_0 come back as MLX affine
quantized triples ``weight``/``scales``/``biases`` with group size 32; F16 and
F32 as plain arrays) and the metadata. The tokenizer is rebuilt from the
metadata with the ``tokenizers`` library and wrapped for mlx-lm, chat template
included. llama.cpp stores Q/K in the interleaved rotary layout, so the model
runs with traditional RoPE.
"""

from __future__ import annotations

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
_TOP_MAP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Pre-tokenizer split patterns named by ``tokenizer.ggml.pre`` (as in llama.cpp's llama-vocab.cpp).
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# ggml tensor types that ``mx.load`` reads exactly. It also converts some others (K-quants) to
# f16 on its own, but not faithfully (Q4_K comes back off by up to 0.8), so those go through
# llama.cpp's ``gguf`` package instead.
_MX_NATIVE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types


def tensor_types(path: str | Path) -> dict[str, int]:
    """``{tensor name: ggml type id}`` from a GGUF header; ``ModelError`` naming the file if it is not one.

    Read by hand, not with ``gguf.GGUFReader``: the reader builds every metadata field as Python
    objects (the embedded model's 49k-token vocabulary among them) and took 5.1 s on the embedded
    model against 0.12 s here, at every model load, only to learn which reader to use."""
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

            def skip_value(vtype):
                if vtype == 8:
                    string()
                elif vtype == 9:
                    sub, count = u32(), u64()
                    if sub in _SCALAR_SIZES:
                        if count * _SCALAR_SIZES[sub] > size:
                            raise EOFError
                        f.seek(count * _SCALAR_SIZES[sub], 1)
                    else:
                        for _ in range(count):
                            skip_value(sub)
                elif vtype in _SCALAR_SIZES:
                    f.seek(_SCALAR_SIZES[vtype], 1)
                else:
                    raise ValueError(f"unknown metadata value type {vtype}")

            magic = f.read(4)
            if magic != b"GGUF":
                raise ModelError(f"{path}: not a GGUF file (starts with {magic!r}, not b'GGUF')")
            version = u32()
            if version not in (2, 3):
                raise ModelError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            n_tensors, n_kv = u64(), u64()
            for _ in range(n_kv):
                string()
                skip_value(u32())
            types = {}
            for _ in range(n_tensors):
                name = string().decode("utf-8", "replace")
                n_dims = u32()
                f.seek(8 * n_dims, 1)
                types[name] = u32()
                u64()
            return types
    except EOFError:
        raise ModelError(f"{path}: truncated or corrupt GGUF file (header ends early)") from None
    except ValueError as exc:
        raise ModelError(f"{path}: corrupt GGUF file ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_gguf(path: str | Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Tensors and metadata of a GGUF file; a ``ModelError`` naming the file if it cannot be read.

    ``mx.load`` reads F32/F16/Q4_0/Q4_1/Q8_0 tensors natively (Q4/Q8 as MLX affine
    triples). A file with other tensor types (K-quants, Q5_*, BF16, ...) is read
    with llama.cpp's ``gguf`` package instead, every tensor dequantized to f32 by
    its reference code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
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
    arch = _meta_scalar(meta, "general.architecture")
    if arch != "llama":
        raise ModelError(f"GGUF architecture {arch!r} is not supported (llama only)")

    def g(key, default=None):
        return _meta_scalar(meta, f"llama.{key}", default)

    def req(key):
        value = g(key)
        if value is None:
            raise ModelError(f"GGUF metadata lacks llama.{key}")
        return int(value)

    n_heads = req("attention.head_count")
    hidden = req("embedding_length")
    vocab = g("vocab_size", len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else None)
    if vocab is None:
        raise ModelError("GGUF metadata lacks tokenizer.ggml.tokens (and llama.vocab_size)")
    vocab = int(vocab)
    head_dim = g("attention.key_length")
    args = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": req("block_count"),
        "intermediate_size": req("feed_forward_length"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g("attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": vocab,
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "max_position_embeddings": int(g("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in weights,
    }
    if head_dim is not None and int(head_dim) != hidden // n_heads:
        args["head_dim"] = int(head_dim)
    n_rot = g("rope.dimension_count")
    if n_rot is not None and int(n_rot) != args.get("head_dim", hidden // n_heads):
        raise ModelError(f"partial rotary embeddings (llama.rope.dimension_count={int(n_rot)}) are not supported")
    scaling_type = g("rope.scaling.type")
    if scaling_type == "linear":
        args["rope_scaling"] = {"type": "linear", "factor": float(g("rope.scaling.factor", 1.0))}
    return args


def rename(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """GGUF tensor names -> mlx-lm llama names (suffixes weight/scales/biases kept)."""
    out = {}
    for name, value in weights.items():
        if name.startswith("rope_freqs"):
            continue
        m = re.match(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)$", name)
        if m:
            layer, part, suffix = m.groups()
            if part not in _LAYER_MAP:
                raise ModelError(f"unexpected GGUF tensor {name}")
            out[f"model.layers.{layer}.{_LAYER_MAP[part]}.{suffix}"] = value
            continue
        m = re.match(r"(\w+)\.(weight|scales|biases)$", name)
        if not m or m.group(1) not in _TOP_MAP:
            raise ModelError(f"unexpected GGUF tensor {name}")
        out[f"{_TOP_MAP[m.group(1)]}.{m.group(2)}"] = value
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
    from mlx_lm.models import llama

    args = llama.ModelArgs.from_dict(model_args(meta, weights))
    rope_factors = weights.get("rope_freqs.weight")
    weights = rename(weights)
    model = llama.Model(args)
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
        raise ModelError(f"GGUF tensors do not fit a llama model: {str(exc).splitlines()[0]}") from None
    mx.eval(model.parameters())
    model.eval()
    return model


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
    add_bos = bool(_meta_scalar(meta, "tokenizer.ggml.add_bos_token", kind == "llama"))

    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        pre = _meta_scalar(meta, "tokenizer.ggml.pre", "default")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "dbrx", "falcon3"):
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(_tokenizer_regex(_LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        elif pre in ("smollm", "starcoder", "refact"):
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            tok.pre_tokenizer = byte_level
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
    """``(model, tokenizer)`` from a llama GGUF; every failure is a one-line ``ModelError`` naming the file."""
    weights, meta = read_gguf(path)
    try:
        model = build_model(meta, weights, keep_quantized=keep_quantized, dtype=dtype)
        tokenizer = build_tokenizer(meta)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # metadata missing or of the wrong type
        raise ModelError(f"{path}: malformed GGUF metadata ({one_line(exc)})") from None
    return model, tokenizer
