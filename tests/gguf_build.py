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
