"""`tui-trainer export`: each format against its reference runtime, on tiny random models written here.

* gguf-lora: llama.cpp (llama-cpp-python) on the base GGUF + the exported LoRA GGUF against the MLX
  policy with the adapter: the greedy tokens and logits of test_gguf_parity's exact-weights bars.
* gguf: llama.cpp on the exported merged GGUF (F32: exact-weights bars; Q8_0: the native bars).
* mlx: ``mlx_lm.load`` on the fused folder against the policy, within float32 rounding, for a llama
  GGUF base (Q/K rows back in Hugging Face order, RoPE no longer traditional) and an mlx-lm base.
* bad input: one line, exit code 2; an interrupted export leaves nothing under the final name.

The adapters are made non-zero (random ``lora_b``): a zero adapter would pass every check by
exporting the base.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from gguf import GGMLQuantizationType as T  # noqa: E402

from gguf_build import add_model_metadata, random_model_tensors, train_bpe, write_gguf  # noqa: E402
from helpers import CHAT_TEMPLATE, make_tiny_model_dir  # noqa: E402
from test_gguf_parity import (N_NEW, NATIVE_REL_QUANT, assert_exact_parity, assert_native_parity, llama,  # noqa: E402
                              quiet_stderr)
from tui_trainer.config import AdapterConfig  # noqa: E402
from tui_trainer.engine.checkpoints import adapter_config, save_checkpoint  # noqa: E402
from tui_trainer.engine.models import base_fingerprint, load_policy, model_reference  # noqa: E402
from tui_trainer.engine.policy import Policy  # noqa: E402

SPECIAL = ["<pad>", "<eos>", "<bos>"]
DIMS = dict(hidden=64, ffn=128, heads=4, kv_heads=2, layers=2)


def _write_base(path: Path, seed: int, arch: str = "llama", tied: bool = False, extra=None, types=(T.F32,),
                more=(), **over) -> Path:
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog 2024 user assistant say hello".split()
    tokens, merges = train_bpe([" ".join(rng.choice(words, size=8)) + "\n" for _ in range(100)], 300, SPECIAL)
    dims = {**DIMS, "vocab": len(tokens), **over}
    tensors = random_model_tensors(arch, np.random.default_rng(seed), list(types), tied=tied, **dims) + list(more)

    def fill(w):
        add_model_metadata(w, arch, extra=extra, **dims)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
        w.add_token_merges(merges)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_pad_token_id(0)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)

    return write_gguf(path, arch, fill, tensors)


def _checkpoint(run_dir: Path, model: str, *, seed: int = 1, scale: float = 2.0, kind: str = "lora"):
    """A run's checkpoint as the trainer writes it, with random (non-zero) lora_b; returns (policy, tokenizer)."""
    mx.random.seed(seed)  # before the adapter is made: MLX seeds its generator from the clock, and lora_a is random
    base, tok = load_policy(model, quantized=False)
    policy = Policy(base, AdapterConfig(type=kind, rank=4, scale=scale, layers=-1))
    weights = policy.adapter_weights()
    policy.model.load_weights([(k, mx.random.normal(v.shape) * 0.1) for k, v in weights.items()
                               if k.endswith("lora_b")], strict=False)
    mx.eval(policy.parameters())
    ref = (model_reference(model), base_fingerprint(model))
    save_checkpoint(run_dir, 3, adapter_weights=policy.adapter_weights(),
                    adapter_config=adapter_config(policy, ref, step=3, mode="ppo"),
                    value_head=policy.value_head_weights(), optimizers={}, state={"step": 3})
    return policy, tok


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-run")
    base = _write_base(root / "base.gguf", seed=5)
    policy, tok = _checkpoint(root / "run", str(base))
    prompt = list(tok.apply_chat_template([{"role": "user", "content": "say hello"}], add_generation_prompt=True))
    return root, base, policy, tok, prompt


def _policy_logits(policy, tokens: list[int]) -> np.ndarray:
    return np.array(policy.model(mx.array([tokens]))[0].astype(mx.float32))


def _llama_greedy(path: Path, prompt: list[int], **kw) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation (F32 KV cache) and its logits at the positions that predicted it."""
    with quiet_stderr():
        llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + N_NEW + 8, logits_all=True, verbose=False,
                              n_threads=1, seed=0, type_k=llama_cpp.GGML_TYPE_F32,
                              type_v=llama_cpp.GGML_TYPE_F32, **kw)
    llm.eval(prompt)
    new = []
    for _ in range(N_NEW):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    p = len(prompt)
    logits = np.array(llm.scores[p - 1: p - 1 + N_NEW], dtype=np.float32)
    with quiet_stderr():
        llm.close()
    return new, logits


def _ours(policy, prompt, new) -> np.ndarray:
    """The policy's (or a plain model's) logits at the positions that predicted ``new``."""
    p = len(prompt)
    model = policy.model if isinstance(policy, Policy) else policy
    return np.array(model(mx.array([prompt + new]))[0].astype(mx.float32))[p - 1: p - 1 + N_NEW]


def test_gguf_lora_in_llama_cpp_matches_policy(gguf_run, tmp_path):
    from tui_trainer.engine.export import export

    root, base, policy, _, prompt = gguf_run
    out = export(root / "run", "gguf-lora", tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.lora.alpha"] == pytest.approx(2.0 * 4)  # mlx-lm scale x rank
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.1.ffn_down.weight.lora_b"} <= names and len(names) == 2 * 7 * 2
    new, ref = _llama_greedy(base, prompt, lora_path=str(out))
    ours = _ours(policy, prompt, new)
    assert_exact_parity(ours, ref, new)
    # the adapter matters: without it llama.cpp's logits are far from the policy's
    _, plain = _llama_greedy(base, prompt)
    assert np.abs(plain[-1] - ours[-1]).max() > 50 * np.abs(ref[-1] - ours[-1]).max()


def test_merged_gguf_in_llama_cpp_matches_policy(gguf_run, tmp_path):
    from tui_trainer.engine.export import export

    root, _, policy, tok, prompt = gguf_run
    out = export(root / "run" / "checkpoints" / "000003", "gguf", tmp_path / "merged", outtype="f32")
    assert (out / "Modelfile").read_text().count("FROM ./model.gguf") == 1
    new, ref = _llama_greedy(out / "model.gguf", prompt)
    assert_exact_parity(_ours(policy, prompt, new), ref, new)
    # the tokenizer and chat template travel with it
    llm = llama(out / "model.gguf", vocab_only=True)
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    text = "the quick brown fox 2024"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == list(tok.encode(text))

    q8 = export(root / "run", "gguf", tmp_path / "merged-q8", outtype="q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(q8 / "model.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == T.Q8_0 and types["blk.0.attn_norm.weight"] == T.F32
    qnew, qref = _native_greedy(q8 / "model.gguf", prompt)
    assert_native_parity(_ours(policy, prompt, qnew), qref, qnew, NATIVE_REL_QUANT)


def _gemma3_extra(w):
    w.add_sliding_window(5)


OTHER_ARCHS = {
    # per-head q/k norms, head size != hidden / heads, tied embeddings, NEOX RoPE: rows as in Hugging Face
    "qwen3": dict(head_dim=32),
    # norms stored as weight + 1 (the merged GGUF must add the 1 back), 4 norms a block, sliding window,
    # sqrt(hidden) = 8 exact in bf16 (so mlx-lm's own Gemma 3 body computes as the policy does)
    "gemma3": dict(layers=6, extra=_gemma3_extra),
}


@pytest.mark.parametrize("arch", OTHER_ARCHS)
def test_other_architectures(arch, tmp_path):
    """qwen3 and gemma3 GGUF bases through all three formats; for qwen3 also a DoRA adapter, merged into a
    GGUF, and refused as a llama.cpp LoRA."""
    from tui_trainer.engine.export import export
    from tui_trainer.errors import ModelError

    base = _write_base(tmp_path / f"{arch}.gguf", seed=7, arch=arch, tied=True, **OTHER_ARCHS[arch])
    policy, tok = _checkpoint(tmp_path / "run", str(base), seed=8)
    prompt = list(tok.encode("say hello to the lazy dog"))
    new, ref = _llama_greedy(base, prompt, lora_path=str(export(tmp_path / "run", "gguf-lora", tmp_path / "a.gguf")))
    assert_exact_parity(_ours(policy, prompt, new), ref, new)
    new, ref = _llama_greedy(export(tmp_path / "run", "gguf", tmp_path / "m", outtype="f32") / "model.gguf", prompt)
    assert_exact_parity(_ours(policy, prompt, new), ref, new)
    out = export(tmp_path / "run", "mlx", tmp_path / "fused", outtype="f32")
    _assert_close(_policy_logits(policy, prompt), _mlx_lm_logits(out, prompt))
    if arch != "qwen3":
        return

    dora, _ = _checkpoint(tmp_path / "dora", str(base), seed=9, kind="dora")
    with pytest.raises(ModelError, match="dora adapter has no llama.cpp LoRA form; use --to gguf"):
        export(tmp_path / "dora", "gguf-lora", tmp_path / "d.gguf")
    new, ref = _llama_greedy(export(tmp_path / "dora", "gguf", tmp_path / "dm", outtype="f32") / "model.gguf", prompt)
    assert_exact_parity(_ours(dora, prompt, new), ref, new)


_HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _llama_cpp_conversion(model_dir: Path, out: Path) -> Path:
    """What llama.cpp's convert_hf_to_gguf.py makes of a tiny mlx-lm llama: its tensor names, and Q/K rows
    permuted by its ``LlamaModel.permute`` (copied here), byte-level vocabulary without merges."""
    cfg = json.loads((model_dir / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(w, n_head):  # convert_hf_to_gguf.py, LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    tensors = []
    for name, value in mx.load(str(model_dir / "model.safetensors")).items():
        value = np.array(value.astype(mx.float32))
        parts = name.split(".")
        if name.startswith("model.layers."):
            stem = _HF_TO_GGUF[".".join(parts[3:-1])]
            if stem in ("attn_q", "attn_k"):
                value = permute(value, heads if stem == "attn_q" else kv_heads)
            name = f"blk.{parts[2]}.{stem}.weight"
        else:
            name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}[name]
        tensors.append((name, value, T.F32))
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]

    def fill(w):
        add_model_metadata(w, "llama", hidden=cfg["hidden_size"], ffn=cfg["intermediate_size"], heads=heads,
                           kv_heads=kv_heads, vocab=len(tokens), layers=cfg["num_hidden_layers"])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
        w.add_token_merges(["a b"])  # llama.cpp needs a merge list; "ab" is no token, so it never applies
        w.add_eos_token_id(1)
        w.add_add_bos_token(False)

    return write_gguf(out, "llama", fill, tensors)


def test_gguf_lora_for_an_mlx_lm_llama_base(tmp_path):
    """An adapter trained on a Hugging Face-order llama, for llama.cpp's conversion of that model: lora_b's
    Q/K columns permuted like the base's rows."""
    from tui_trainer.engine.export import export

    base = make_tiny_model_dir(tmp_path / "base", seed=3)
    policy, tok = _checkpoint(tmp_path / "run", str(base), seed=4)
    converted = _llama_cpp_conversion(base, tmp_path / "base.gguf")
    prompt = list(tok.encode("hello there, general kenobi"))
    new, ref = _llama_greedy(converted, prompt, lora_path=str(export(tmp_path / "run", "gguf-lora",
                                                                     tmp_path / "a.gguf")))
    assert_exact_parity(_ours(policy, prompt, new), ref, new)


def _native_greedy(path: Path, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation with its default kernels and KV cache (the native bars)."""
    with quiet_stderr():
        llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + N_NEW + 8, logits_all=True, verbose=False,
                              n_threads=1, seed=0)
    llm.eval(prompt)
    new = []
    for _ in range(N_NEW):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    logits = np.array(llm.scores[len(prompt) - 1: len(prompt) - 1 + N_NEW], dtype=np.float32)
    with quiet_stderr():
        llm.close()
    return new, logits


def test_merged_gguf_in_the_base_quantization(tmp_path):
    """--outtype base: every tensor in the base GGUF's own type (Q4_1, Q8_0, F16 here), holding the fused
    weights to that type's rounding (against the F32 export), and a file llama.cpp runs as MLX reads it."""
    from gguf_build import dequantized
    from tui_trainer.engine.export import export
    from tui_trainer.engine.gguf import load_gguf

    base = _write_base(tmp_path / "mixed.gguf", seed=5, types=(T.Q4_1, T.Q8_0, T.F16))
    _, tok = _checkpoint(tmp_path / "run", str(base), seed=2)
    out = export(tmp_path / "run", "gguf", tmp_path / "m", outtype="base") / "model.gguf"
    f32 = export(tmp_path / "run", "gguf", tmp_path / "m32", outtype="f32") / "model.gguf"
    base_types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(base)).tensors}
    written = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert {n: t.tensor_type for n, t in written.items()} == base_types
    assert {T.Q4_1, T.Q8_0, T.F16} <= set(base_types.values())
    # relative RMS error of the rounding, measured: Q4_1 0.076, Q8_0 0.0054, F16 2.1e-4; a misplaced or
    # wrong tensor is ~1.4
    bound = {T.Q4_1: 0.12, T.Q8_0: 0.01, T.F16: 1e-3, T.F32: 0.0}
    for t in gguf.GGUFReader(str(f32)).tensors:
        exact, rounded = dequantized(t), dequantized(written[t.name])
        rel = float(np.sqrt(((rounded - exact) ** 2).mean() / (exact ** 2).mean()))
        assert rel <= bound[written[t.name].tensor_type], (t.name, written[t.name].tensor_type.name, rel)
    model, _ = load_gguf(out)
    prompt = list(tok.encode("say hello to the lazy dog"))
    new, ref = _native_greedy(out, prompt)
    assert_native_parity(_ours(model, prompt, new), ref, new, NATIVE_REL_QUANT)


def test_rope_frequency_factors(tmp_path):
    """A Llama 3.1-style base with RoPE frequency factors (rope_freqs.weight): the merged GGUF keeps them (same
    logits as the policy in llama.cpp); an mlx-lm config cannot name them, so --to mlx says so in one line."""
    from tui_trainer.engine.export import export
    from tui_trainer.errors import ModelError

    factors = np.linspace(1.0, 40.0, 64 // 4 // 2, dtype=np.float32)  # head size 16: 8 pairs
    base = _write_base(tmp_path / "freqs.gguf", seed=5, more=[("rope_freqs.weight", factors, T.F32)])
    policy, tok = _checkpoint(tmp_path / "run", str(base), seed=3)
    prompt = list(tok.encode("the quick brown fox jumps over a lazy dog 2024 say hello"))
    new, ref = _llama_greedy(export(tmp_path / "run", "gguf", tmp_path / "m", outtype="f32") / "model.gguf", prompt)
    assert_exact_parity(_ours(policy, prompt, new), ref, new)
    with pytest.raises(ModelError, match="RoPE frequency factors .* export --to gguf instead"):
        export(tmp_path / "run", "mlx", tmp_path / "fused")
    assert not (tmp_path / "fused").exists()


def _mlx_lm_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from mlx_lm import load

    model, _ = load(str(path))
    return np.array(model(mx.array([tokens]))[0].astype(mx.float32))


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    # float32: fusing changes the order of a few sums per layer; both sides are f32 end to end
    tol = 1e-4 * max(1.0, float(np.abs(ours).max()))
    diff = float(np.abs(ours - theirs).max())
    assert diff <= tol, f"max logit difference {diff:.3g} > {tol:.3g}"
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_fused_mlx_from_gguf_base_loads_in_mlx_lm(gguf_run, tmp_path):
    from tui_trainer.engine.export import export

    root, _, policy, tok, prompt = gguf_run
    out = export(root / "run", "mlx", tmp_path / "fused", outtype="f32")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_traditional"] is False
    tokens = prompt + list(tok.encode(" the quick brown fox jumps over a lazy dog"))
    _assert_close(_policy_logits(policy, tokens), _mlx_lm_logits(out, tokens))
    from mlx_lm import load

    _, loaded_tok = load(str(out))
    msgs = [{"role": "user", "content": "say hello"}]
    assert list(loaded_tok.apply_chat_template(msgs, add_generation_prompt=True)) == prompt
    assert 1 in loaded_tok.eos_token_ids


def test_fused_mlx_from_mlx_lm_base(tmp_path):
    from tui_trainer.engine.export import export

    base = make_tiny_model_dir(tmp_path / "base", seed=3)
    policy, tok = _checkpoint(tmp_path / "run", str(base), seed=4)
    saved = json.loads((tmp_path / "run" / "checkpoints" / "000003" / "adapter_config.json").read_text())
    assert saved["model"] == str(base.resolve())  # mlx_lm --adapter-path finds its base
    out = export(tmp_path / "run", "mlx", tmp_path / "fused", outtype="f32")
    tokens = list(tok.encode("hello there, general kenobi"))
    ours = _policy_logits(policy, tokens)
    _assert_close(ours, _mlx_lm_logits(out, tokens))
    q8 = export(tmp_path / "run", "mlx", tmp_path / "fused-q8", outtype="q8_0")
    assert json.loads((q8 / "config.json").read_text())["quantization"]["bits"] == 8
    # 8-bit weights (groups of 32): measured 0.03 x the logits' spread; a wrong or missing weight is far above 0.15
    assert float(np.abs(ours - _mlx_lm_logits(q8, tokens)).max()) <= 0.15 * float(ours.std())


# --------------------------------------------------------------------------- bad input


def _cli(capsys, *argv) -> tuple[int, str]:
    from tui_trainer.cli import main

    rc = main(["export", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_input_one_line_exit_2(gguf_run, tmp_path, capsys):
    root, base, _, _, _ = gguf_run
    rc, err = _cli(capsys, tmp_path / "nowhere", "--to", "gguf", "-o", tmp_path / "o")
    assert rc == 2 and "no such run directory or checkpoint" in err and "\n" not in err

    rc, err = _cli(capsys, root / "run", "--to", "mlx", "--outtype", "q4_0", "-o", tmp_path / "o")
    assert rc == 2 and "--outtype q4_0 is not available --to mlx" in err and "\n" not in err

    (tmp_path / "taken").mkdir()
    rc, err = _cli(capsys, root / "run", "--to", "mlx", "-o", tmp_path / "taken")
    assert rc == 2 and "already exists" in err and "--force" in err

    # an mlx-lm base cannot become a GGUF here: say so and point to --to mlx
    mlx_base = make_tiny_model_dir(tmp_path / "mlxbase", seed=3)
    _checkpoint(tmp_path / "mlxrun", str(mlx_base))
    rc, err = _cli(capsys, tmp_path / "mlxrun", "--to", "gguf", "-o", tmp_path / "g")
    assert rc == 2 and "--to mlx" in err and "\n" not in err
    assert not (tmp_path / "g").exists()

    # the base is gone / the base changed (same path, other weights)
    moved = tmp_path / "base-copy.gguf"
    moved.write_bytes(base.read_bytes())
    _checkpoint(tmp_path / "run2", str(moved))
    moved.rename(tmp_path / "elsewhere.gguf")
    rc, err = _cli(capsys, tmp_path / "run2", "--to", "gguf-lora", "-o", tmp_path / "a.gguf")
    assert rc == 2 and "base model is missing" in err and str(moved) in err
    _write_base(moved, seed=6)
    rc, err = _cli(capsys, tmp_path / "run2", "--to", "gguf-lora", "-o", tmp_path / "a.gguf")
    assert rc == 2 and "has changed" in err and str(moved) in err
    assert not (tmp_path / "a.gguf").exists()


def test_checkpoint_without_recorded_base_uses_the_run_config(gguf_run, tmp_path):
    """Checkpoints written before the base was recorded ("model": null): the run's config.yaml names it."""
    import shutil

    from tui_trainer.engine.export import export

    root, base, policy, _, prompt = gguf_run
    run = tmp_path / "old"
    shutil.copytree(root / "run", run)
    cfg = run / "checkpoints" / "000003" / "adapter_config.json"
    saved = json.loads(cfg.read_text())
    saved["model"] = None
    del saved["tui_trainer"]["base"]
    cfg.write_text(json.dumps(saved))
    (run / "config.yaml").write_text(f"model: {base}\n")
    new, ref = _llama_greedy(base, prompt, lora_path=str(export(run, "gguf-lora", tmp_path / "a.gguf")))
    assert_exact_parity(_ours(policy, prompt, new), ref, new)


def test_interrupted_export_leaves_no_file(gguf_run, tmp_path):
    from tui_trainer.engine.export import export

    root = gguf_run[0]

    def interrupt(phase, done, total):
        if phase.startswith("writing") and done == 2:
            raise KeyboardInterrupt

    for fmt, name in (("gguf-lora", "a.gguf"), ("gguf", "merged")):
        with pytest.raises(KeyboardInterrupt):
            export(root / "run", fmt, tmp_path / name, progress=interrupt)
        assert list(tmp_path.iterdir()) == [], f"{fmt}: {list(tmp_path.iterdir())}"


def test_fuse_leaves_no_quantized_layer(tmp_path):
    """A quantized mlx-lm base (QLoRA; kept quantized when loaded on a GPU) fuses into a plain f32 model that
    computes what the adapted quantized one did, so no export writes quantized tensors under a float config."""
    import mlx.nn as nn
    from mlx_lm import load

    from tui_trainer.engine.export import fuse

    model, _ = load(str(make_tiny_model_dir(tmp_path / "base", seed=3)))
    nn.quantize(model, group_size=32, bits=8)
    mx.random.seed(0)
    policy = Policy(model, AdapterConfig(rank=4, scale=2.0, layers=1))
    policy.model.load_weights([(k, mx.random.normal(v.shape) * 0.1) for k, v in policy.adapter_weights().items()
                               if k.endswith("lora_b")], strict=False)
    tokens = mx.array([[5, 17, 42, 99, 7]])
    before = np.array(policy.model(tokens))
    fuse(policy.model)
    assert not [n for n, m in policy.model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    assert {v.dtype for _, v in tree_flatten(policy.model.parameters())} == {mx.float32}
    _assert_close(before, np.array(policy.model(tokens)))


def test_a_trained_run_exports(tmp_path):
    """A checkpoint written by the trainer itself (one PPO step on a tiny mlx-lm llama, adapter on the last
    block only): --to mlx gives the trained policy's logits."""
    from tui_trainer.engine.export import export
    from tui_trainer.run import build_run

    from test_trainer import make_config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["alpha", "beta", "gamma", "delta"]))
    base = make_tiny_model_dir(tmp_path / "base", seed=0)
    trainer = build_run(make_config(base, prompts, tmp_path / "run", steps=1, actor_lr=5e-3))
    assert trainer.run().status == "finished"
    tokens = [5, 17, 42, 99, 7, 64]
    ours = _policy_logits(trainer.policy, tokens)
    out = export(tmp_path / "run", "mlx", tmp_path / "fused", outtype="f32")
    _assert_close(ours, _mlx_lm_logits(out, tokens))
    # one step moved the policy (measured: logits up to 4 apart from the base's), so the base alone fails the bar
    assert float(np.abs(_mlx_lm_logits(base, tokens) - ours).max()) > 1.0
