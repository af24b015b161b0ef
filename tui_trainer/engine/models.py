"""Load the policy: an mlx-lm model directory / repo, or a GGUF file (the embedded default)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from tui_trainer.embedded import default_model_path
from tui_trainer.engine import cpu_math
from tui_trainer.errors import ModelError, one_line

__all__ = ["default_model_path", "load_policy", "locate_model", "on_gpu", "compute_dtype"]


def on_gpu() -> bool:
    return mx.default_device() == mx.gpu


def compute_dtype() -> mx.Dtype:
    """f32 on CPU (bf16 has no BLAS path there); bf16 would do on GPU but f32 keeps PPO ratios exact."""
    return mx.float32


def load_policy(path: str | None = None, *, quantized: bool | None = None):
    """Load ``(model, tokenizer)``. ``None`` means the embedded default GGUF.

    ``quantized``: keep Q4/Q8 tensors quantized (QLoRA style). Default: keep them
    on GPU, dequantize to f32 on CPU where the optimized BLAS is the fast path.
    """
    if quantized is None:
        quantized = on_gpu()
    kind, target = locate_model(path)
    if kind == "gguf":
        from tui_trainer.engine.gguf import load_gguf

        model, tokenizer = load_gguf(target, keep_quantized=quantized, dtype=compute_dtype())
    else:
        model, tokenizer = _load_mlx_lm(str(target), quantized, shown=path)
    model.eval()
    cpu_math.install(model)  # on the CPU: exp through exp2 in SwiGLU and attention (engine/cpu_math.py)
    return model, tokenizer


def locate_model(path: str | None) -> tuple[str, Path]:
    """("gguf" | "mlx", local path) of a model reference, without loading it (cheap: a
    front end checks it before the model loads). A hub repo id must already be in the local
    Hugging Face cache: nothing is downloaded at run time. Raises ModelError (one line)."""
    target = Path(path).expanduser() if path is not None else default_model_path()
    if target.suffix.lower() == ".gguf" or (target.is_file() and _is_gguf(target)):
        if not target.is_file():
            raise ModelError(f"{target}: no such model file")
        return "gguf", target
    if target.is_dir():
        if not (target / "config.json").is_file():
            raise ModelError(f"{target}: not a model directory (no config.json); give an mlx-lm or Hugging Face "
                             "model folder, a hub repo id, or a .gguf file")
        return "mlx", target
    if path is not None and not target.exists() and path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return "mlx", _cached_repo(path)
    raise ModelError(f"{target}: no such model file or directory")


def _cached_repo(repo_id: str) -> Path:
    """The local snapshot of hub repo ``repo_id`` (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001  LocalEntryNotFoundError, a malformed id, ...
        raise ModelError(f"{repo_id}: not a local path, and not in the Hugging Face cache (nothing is downloaded "
                         f"at run time; fetch it once: huggingface-cli download {repo_id})") from None


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _load_mlx_lm(path: str, quantized: bool, shown: str | None = None):
    from mlx_lm import load

    shown = shown or path
    try:
        model, tokenizer = load(path)
    except FileNotFoundError as exc:
        raise ModelError(f"{shown}: {one_line(exc).removeprefix('FileNotFoundError: ')}") from None
    except Exception as exc:  # mlx-lm raises many types for a broken directory
        raise ModelError(f"{shown}: cannot load as an mlx-lm model ({one_line(exc)})") from None
    if not quantized and not on_gpu():
        _dequantize_model(model)
    return model, tokenizer


def _dequantize_model(model: nn.Module) -> None:
    """Replace quantized layers by float ones (CPU: f32 matmul goes through BLAS)."""
    from mlx_lm.utils import dequantize_model

    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
        dequantize_model(model)
    model.set_dtype(compute_dtype())


def model_reference(path: str | None) -> str:
    """How a checkpoint names its base model: a hub repo id as given, else the absolute path of the
    file or folder (the embedded default's GGUF included), so that it is found from any directory."""
    kind, target = locate_model(path)
    if path is not None and not Path(path).expanduser().exists() and kind == "mlx" and target != Path(path):
        return path  # a hub repo id (mlx-lm resolves it from the cache)
    return str(target.resolve())


def base_fingerprint(path: str | None) -> dict:
    """A cheap identity of a base model, recorded in each checkpoint so that an export can tell a base
    that changed since: the size and the SHA-256 of the first and last MiB of a GGUF file, or of an
    mlx-lm folder's config.json and the sizes of its weight files."""
    import hashlib

    _, target = locate_model(path)
    digest = hashlib.sha256()
    if target.is_file():
        size = target.stat().st_size
        with open(target, "rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            digest.update(f.read(1 << 20))
    else:
        digest.update((target / "config.json").read_bytes())
        files = sorted(target.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in files)
        for p in files:
            digest.update(f"{p.name}:{p.stat().st_size};".encode())
    return {"size": size, "sha256": digest.hexdigest()}
