"""Model loading: mlx-lm directories work; every bad path or file is a one-line ModelError naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from helpers import make_tiny_model_dir
from tui_trainer.errors import ModelError, TrainerError
from tui_trainer.engine.models import default_model_path, load_policy


def load_error(path) -> str:
    with pytest.raises(ModelError) as info:
        load_policy(str(path))
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    assert isinstance(info.value, TrainerError)
    return msg


# --------------------------------------------------------------------------- GGUF files


def _tiny_gguf(path: Path, *, arch: str = "llama", hidden: int = 32, drop_key: str | None = None,
               tokens: bool = True, tensor_rows: int | None = None, extra: dict | None = None,
               strings: dict | None = None, extra_tensors: tuple[str, ...] = ()) -> Path:
    """A tiny GGUF written with llama.cpp's own writer; knobs break it in one chosen way."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    keys = {
        "block_count": 1, "context_length": 64, "embedding_length": hidden, "feed_forward_length": 64,
        "attention.head_count": 2, "attention.head_count_kv": 2,
    }
    for key, value in {**keys, **(extra or {})}.items():
        if key != drop_key:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    for key, value in (strings or {}).items():
        w.add_string(key, value)
    vocab = [f"t{i}" for i in range(40)]
    if tokens:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(vocab)
        w.add_token_types([1] * len(vocab))
        w.add_token_merges([])
        w.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def t(name, *shape):
        w.add_tensor(name, rng.normal(size=shape).astype(np.float32))

    t("token_embd.weight", len(vocab), hidden)
    t("output_norm.weight", hidden)
    t("blk.0.attn_norm.weight", hidden)
    t("blk.0.ffn_norm.weight", hidden)
    for part in ("q", "k", "v", "output"):
        t(f"blk.0.attn_{part}.weight", tensor_rows or hidden, hidden)
    t("blk.0.ffn_gate.weight", 64, hidden)
    t("blk.0.ffn_up.weight", 64, hidden)
    t("blk.0.ffn_down.weight", hidden, 64)
    for name in extra_tensors:
        t(name, 4, hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_gguf_loads(tmp_path):
    """The builder's unbroken file loads, so each broken variant below fails for its own reason."""
    model, tok = load_policy(str(_tiny_gguf(tmp_path / "ok.gguf")))
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, 40)
    assert tok.eos_token_ids == {1}


def test_missing_gguf_path(tmp_path):
    msg = load_error(tmp_path / "nope.gguf")
    assert "no such model file" in msg


def test_missing_directory(tmp_path):
    msg = load_error(tmp_path / "no-such-model-dir")
    assert "no such model file or directory" in msg


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert "not a GGUF file" in load_error(empty)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    assert "not a GGUF file" in load_error(garbage)


def test_truncated_header(tmp_path):
    whole = _tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:200])
    assert "truncated or corrupt" in load_error(cut)


def test_truncated_tensor_data(tmp_path):
    """The embedded model cut short in its tensor data: mx.load notices, and we say which file."""
    cut = tmp_path / "cut-smollm2.gguf"
    with open(default_model_path(), "rb") as f:
        cut.write_bytes(f.read(8_000_000))
    msg = load_error(cut)
    assert "not a readable GGUF file" in msg and "past the end" in msg


def test_unsupported_architecture_names_what_to_use_instead(tmp_path):
    """A phi3 GGUF is refused in one line that lists the supported architectures and names the Hugging
    Face repo the file says it came from; without such a key, its general.name."""
    msg = load_error(_tiny_gguf(tmp_path / "phi.gguf", arch="phi3", strings={
        "general.name": "Phi 3 Mini", "general.source.url": "https://huggingface.co/microsoft/Phi-3-mini-4k-instruct"}))
    assert "architecture 'phi3' is not supported (only llama, qwen2, qwen3, gemma3)" in msg
    assert msg.endswith("load the Hugging Face repo of the same model instead (--model microsoft/Phi-3-mini-4k-instruct)")
    msg = load_error(_tiny_gguf(tmp_path / "phi-anon.gguf", arch="phi3", strings={"general.name": "Phi 3 Mini"}))
    assert msg.endswith("instead (--model ORG/NAME, the repo of 'Phi 3 Mini')"), msg


def test_unsupported_architecture_is_refused_before_the_tensors_are_read(tmp_path):
    """The refusal comes from the header: a file cut short in its tensor data still gets it."""
    whole = _tiny_gguf(tmp_path / "whole.gguf", arch="phi3").read_bytes()
    cut = tmp_path / "phi-cut.gguf"
    cut.write_bytes(whole[:len(whole) - 4000])
    assert "architecture 'phi3' is not supported" in load_error(cut)


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    """Mistral-Nemo's 'tekken' split rule is not one we reproduce: refused, not tokenized GPT-2 style."""
    path = _tiny_gguf(tmp_path / "nemo.gguf", strings={
        "tokenizer.ggml.pre": "tekken", "general.source.huggingface.repository": "mistralai/Mistral-Nemo-Instruct-2407"})
    msg = load_error(path)
    assert "tokenizer.ggml.pre 'tekken' is not supported; load the Hugging Face repo of the same model instead " \
           "(--model mistralai/Mistral-Nemo-Instruct-2407)" in msg


def test_gguf_with_a_vision_tower_is_refused(tmp_path):
    """Ollama's gemma3 files hold the vision tower (v.*, mm.*) beside the text model: refused in one line."""
    msg = load_error(_tiny_gguf(tmp_path / "vision.gguf", extra_tensors=("v.blk.0.attn_q.weight",),
                                strings={"general.source.url": "https://huggingface.co/google/gemma-3-4b-it"}))
    assert "vision tower (tensor v.blk.0.attn_q.weight)" in msg and msg.endswith("(--model google/gemma-3-4b-it)")


def test_missing_metadata_key(tmp_path):
    msg = load_error(_tiny_gguf(tmp_path / "nokey.gguf", drop_key="embedding_length"))
    assert "lacks llama.embedding_length" in msg


def test_partial_rotary_is_refused(tmp_path):
    msg = load_error(_tiny_gguf(tmp_path / "rot.gguf", extra={"rope.dimension_count": 8}))
    assert "partial rotary" in msg


def test_tensors_that_do_not_fit(tmp_path):
    msg = load_error(_tiny_gguf(tmp_path / "shapes.gguf", tensor_rows=48))
    assert "do not fit a llama model" in msg


def test_gguf_without_tokenizer(tmp_path):
    msg = load_error(_tiny_gguf(tmp_path / "notok.gguf", tokens=False))
    assert "tokenizer.ggml.tokens" in msg


# --------------------------------------------------------------------------- mlx-lm directories


def test_mlx_lm_directory_loads(tmp_path):
    path = make_tiny_model_dir(tmp_path / "tiny", seed=3)
    model, tok = load_policy(str(path))
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), model.args.vocab_size)
    assert logits.dtype == mx.float32
    assert tok.eos_token_id == 1
    assert tok.decode(tok.encode("hello world", add_special_tokens=False)) == "hello world"


def test_quantized_mlx_lm_directory_is_dequantized_on_cpu(tmp_path):
    """A quantized mlx-lm model: f32 layers on CPU by default, QuantizedLinear kept when asked."""
    from mlx_lm.utils import load as mlx_load, quantize_model, save_config, save_model

    src = make_tiny_model_dir(tmp_path / "tiny", seed=4)
    model, _ = mlx_load(str(src))
    config = json.loads((src / "config.json").read_text())
    model, config = quantize_model(model, config, group_size=32, bits=8)
    dst = tmp_path / "tiny-q8"
    dst.mkdir()
    save_model(dst, model)
    save_config(config, dst / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    ids = mx.array([[3, 4, 5, 6]])
    expect = model(ids)

    def quantized_layers(m):
        return sum(isinstance(x, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, x in m.named_modules())

    plain, _ = load_policy(str(dst), quantized=False)
    assert quantized_layers(plain) == 0
    assert plain.model.layers[0].self_attn.q_proj.weight.dtype == mx.float32
    kept, _ = load_policy(str(dst), quantized=True)
    assert quantized_layers(kept) > 0
    assert mx.abs(plain(ids) - expect).max().item() < 1e-3
    assert mx.abs(kept(ids) - expect).max().item() < 1e-5


def test_broken_mlx_lm_directory(tmp_path):
    path = make_tiny_model_dir(tmp_path / "broken", seed=5)
    (path / "model.safetensors").write_bytes(b"not safetensors")
    msg = load_error(path)
    assert "cannot load as an mlx-lm model" in msg


def test_cli_reports_a_bad_model_in_one_line(tmp_path):
    missing = tmp_path / "missing.gguf"
    proc = subprocess.run([sys.executable, "-m", "tui_trainer", "rollout", "--model", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in proc.stderr, proc.stderr
