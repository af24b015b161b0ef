"""Write GGUF files for tests with the ``gguf`` package (llama.cpp's own Python writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def copy_fields(reader, writer, *, prefixes: tuple[str, ...] | None = None) -> None:
    """Copy ``reader``'s metadata into ``writer`` (all keys, or those starting with ``prefixes``)."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        if prefixes is not None and not key.startswith(prefixes):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def encode_tensor(value: np.ndarray, qtype) -> tuple[np.ndarray, object]:
    """``(data, raw_dtype)`` of an f32 array stored as ``qtype`` (F32, F16 or a type gguf.quants can quantize)."""
    from gguf import GGMLQuantizationType as T, quants

    value = np.ascontiguousarray(value, dtype=np.float32)
    if qtype == T.F32:
        return value, None
    if qtype == T.F16:
        return value.astype(np.float16), None
    return quants.quantize(value, qtype), qtype


def write_gguf(path: Path, arch: str, fill_metadata, tensors: list[tuple[str, np.ndarray, object]]) -> Path:
    """A GGUF at ``path``: ``fill_metadata(writer)`` adds the keys, ``tensors`` is [(name, f32 array, qtype)]."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    fill_metadata(writer)
    for name, value, qtype in tensors:
        data, raw = encode_tensor(value, qtype)
        if raw is None:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def dequantized(tensor) -> np.ndarray:
    """A GGUFReader tensor as f32 in numpy (row-major) shape, by the gguf package's reference code."""
    from gguf import GGMLQuantizationType as T, quants

    shape = tuple(int(d) for d in reversed(tensor.shape))
    if tensor.tensor_type in (T.F32, T.F16):
        return np.asarray(tensor.data, dtype=np.float32).reshape(shape)
    return quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)


def write_f32_copy(reader, dst: Path) -> Path:
    """The GGUF behind ``reader`` (a ``gguf.GGUFReader``) with every tensor dequantized to F32, metadata
    copied verbatim; written tensor by tensor, so a large model never sits in memory twice."""
    import gguf

    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    copy_fields(reader, writer)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(dequantized(t))
    writer.close()
    return Path(dst)


# --------------------------------------------------------------------------- tiny random models

def add_model_metadata(w, arch: str, *, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int, layers: int = 2,
                       head_dim: int | None = None, rope_base: float = 10000.0, extra=None) -> None:
    """The ``{arch}.*`` hyperparameters llama.cpp's converter writes (``extra(w)`` adds arch-specific ones)."""
    head_dim = head_dim or hidden // heads
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
    w.add_rope_freq_base(rope_base)
    if head_dim != hidden // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    if extra:
        extra(w)


def random_model_tensors(arch: str, rng, types, *, hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int,
                         layers: int = 2, head_dim: int | None = None, tied: bool = False, **_metadata_only):
    """A random model of ``arch`` (llama, qwen2, qwen3, gemma3) as [(GGUF name, f32 array, qtype)]; ``types`` is
    cycled over the matmul weights so that every listed type appears; norms and biases stay F32. Norm weights sit
    near 1, as llama.cpp stores them (for gemma3 that is HF's weight + 1, which the converter adds)."""
    from gguf import GGMLQuantizationType as T

    head_dim = head_dim or hidden // heads
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    cycle = iter(list(types) * 1000)

    def r(*shape, scale):
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    def norm(n):
        return 1 + r(n, scale=0.1)

    # Gemma multiplies the embeddings by sqrt(hidden): keep its residual stream near unit scale, as trained ones are
    out = [("token_embd.weight", r(vocab, hidden, scale=hidden ** -0.5 if arch == "gemma3" else 1.0), next(cycle))]
    for i in range(layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", norm(hidden), T.F32),
            (b + "attn_q.weight", r(q_dim, hidden, scale=0.3), next(cycle)),
            (b + "attn_k.weight", r(kv_dim, hidden, scale=0.3), next(cycle)),
            (b + "attn_v.weight", r(kv_dim, hidden, scale=0.3), next(cycle)),
            (b + "attn_output.weight", r(hidden, q_dim, scale=0.2), next(cycle)),
            (b + "ffn_norm.weight", norm(hidden), T.F32),
            (b + "ffn_gate.weight", r(ffn, hidden, scale=0.2), next(cycle)),
            (b + "ffn_up.weight", r(ffn, hidden, scale=0.2), next(cycle)),
            (b + "ffn_down.weight", r(hidden, ffn, scale=0.2), next(cycle)),
        ]
        if arch == "qwen2":
            out += [(b + "attn_q.bias", r(q_dim, scale=0.5), T.F32), (b + "attn_k.bias", r(kv_dim, scale=0.5), T.F32),
                    (b + "attn_v.bias", r(kv_dim, scale=0.5), T.F32)]
        if arch in ("qwen3", "gemma3"):
            out += [(b + "attn_q_norm.weight", norm(head_dim), T.F32), (b + "attn_k_norm.weight", norm(head_dim), T.F32)]
        if arch == "gemma3":
            out += [(b + "post_attention_norm.weight", norm(hidden), T.F32),
                    (b + "post_ffw_norm.weight", norm(hidden), T.F32)]
    out.append(("output_norm.weight", norm(hidden), T.F32))
    if not tied:
        out.append(("output.weight", r(vocab, hidden, scale=0.5), next(cycle)))
    return out


def train_bpe(corpus: list[str], vocab_size: int, special: list[str]) -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary trained with ``tokenizers`` on ``corpus``: (tokens by id, merges "a b"),
    the special tokens first. Trained on whole lines (no split rule), so that merges cross what the split rules
    separate (digit runs, a letter after punctuation, runs of newlines) and tokenizing with a wrong rule shows."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges
