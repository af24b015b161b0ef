"""Proof of the GGUF import: MLX (``load_policy`` on a GGUF) against llama.cpp on the same file.

For every GGUF under test (the embedded SmolLM2, the files named in the env var
``TUI_TRAINER_PARITY_GGUF`` (comma-separated), and small llama GGUFs the tests
write themselves), llama.cpp generates a 32-token greedy continuation of a
prompt with ``logits_all=True``; prompt + continuation go through the MLX model
in one forward pass, and the two sets of logits are compared at the 32
positions that predicted the continuation.

Two comparisons, because llama.cpp's kernels for quantized tensors round the
*activations* to 8 bits (Q8_0/Q8_1 blocks) before each matmul:

* exact weights: llama.cpp runs an F32 copy of the file (every tensor
  dequantized by the ``gguf`` package, llama.cpp's own reference code; metadata
  copied verbatim) with an F32 KV cache, so both sides compute in f32 on the
  same weights. MLX still loads the original file. Same argmax at all 32
  positions, and the last position within ``EXACT_TOL``.
* native: llama.cpp runs the file itself with its default kernels. Same argmax
  at every position except genuine near-ties (see ``assert_native_parity``),
  and the last position within ``native_tol``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from gguf import GGMLQuantizationType as T  # noqa: E402

from gguf_build import add_model_metadata, dequantized, write_f32_copy, write_gguf  # noqa: E402
from tui_trainer.engine.gguf import _meta_scalar, dequantize_all, load_gguf, read_gguf, tensor_types  # noqa: E402
from tui_trainer.engine.models import default_model_path, load_policy  # noqa: E402

N_NEW = 32
# one thread: ggml's worker threads spin at barriers, which on a busy 2-core machine costs more than it gains
N_THREADS = 1

# Exact-weights run: both sides compute in f32 on identical weights; what is left is the
# order of the f32 sums (OpenBLAS vs ggml's kernels) over up to ~30 layers, which on
# SmolLM2-135M stays near 1e-4. 2e-2 leaves headroom for deeper models while any real
# import error (a rounded weight, a wrong RoPE layout, norm epsilon or head split) is
# far above it.
EXACT_TOL = 2e-2

# Native run: llama.cpp's own kernels on the file. Differences are measured in units of
# the spread (standard deviation over the vocabulary) of llama.cpp's logits at that
# position, so the bound means the same on a real LM (std ~3-4) as on a random one.
# Float weights: llama.cpp rounds activations to f16 for F16 matmuls and keeps the KV
# cache in f16; measured on SmolLM2 as F16: at most 0.02 std. Bound: 0.1 std.
NATIVE_REL_FLOAT = 0.1
# Quantized weights: llama.cpp also quantizes every activation row to 8 bits (Q8_0/Q8_1
# blocks of 32, Q8_K blocks of 256) inside its Q4/Q5/Q8/K-quant dot products. Emulating
# just that rounding in MLX moves SmolLM2-135M's logits by up to 2.7 (std ~3.5), and the
# measured MLX-vs-llama.cpp gap on its Q4_1 / Q4_0 / Q8_0 / Q4_K_M files is up to 0.61
# std. Bound: 1.0 std. A broken import is off by several std at every position, and the
# exact-weights run pins the import itself to EXACT_TOL.
NATIVE_REL_QUANT = 1.0
# Near-ties may flip the greedy token on noise of that size, but they are rare: at least
# this share of the 32 positions must pick the very same token (measured: >= 29/32).
NATIVE_MIN_SAME = 0.75

FLOAT_TYPES = (T.F32, T.F16, T.BF16)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs from C straight to fd 2; send it to /dev/null while it loads."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def llama(path: Path, *, n_ctx: int = 256, f32_kv: bool = False, vocab_only: bool = False):
    kw = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
    with quiet_stderr():
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=not vocab_only, vocab_only=vocab_only,
                               verbose=False, n_threads=N_THREADS, seed=0, **kw)


def llama_tokenize(llm, text: str, add_special: bool) -> list[int]:
    with quiet_stderr():  # it warns on stderr about a doubled BOS
        return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)


def llama_greedy(path: Path, prompt: list[int], *, f32_kv: bool) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation and its logits at the positions that predicted it."""
    llm = llama(path, n_ctx=len(prompt) + N_NEW + 8, f32_kv=f32_kv)
    llm.eval(prompt)
    new = []
    for _ in range(N_NEW):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        new.append(tok)
        llm.eval([tok])
    p = len(prompt)
    logits = np.array(llm.scores[p - 1: p - 1 + N_NEW], dtype=np.float32)
    with quiet_stderr():
        llm.close()
    return new, logits


def mlx_logits(model, prompt: list[int], new: list[int]) -> np.ndarray:
    out = model(mx.array([prompt + new]))[0].astype(mx.float32)
    p = len(prompt)
    return np.array(out[p - 1: p - 1 + N_NEW])


def prompt_ids(tok) -> list[int]:
    if getattr(tok, "chat_template", None):
        try:
            return list(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                add_generation_prompt=True))
        except Exception:  # a template that wants more than messages: fall back to plain text
            pass
    return list(tok.encode("The capital of France is"))


def assert_exact_parity(ours: np.ndarray, ref: np.ndarray, new: list[int]) -> None:
    ours_top = ours.argmax(-1)
    bad = [i for i in range(N_NEW) if ours_top[i] != new[i]]
    assert not bad, f"greedy token differs at positions {bad}: mlx {ours_top[bad].tolist()} llama.cpp {[new[i] for i in bad]}"
    last = float(np.abs(ours[-1] - ref[-1]).max())
    assert last <= EXACT_TOL, f"last-position max-abs logit difference {last:.4g} > {EXACT_TOL}"


def assert_native_parity(ours: np.ndarray, ref: np.ndarray, new: list[int], rel: float) -> None:
    """Same argmax at every position, except a near-tie: where each side's pick scores within
    ``tol`` of the top logit on the *other* side too, logits that agree to ``tol`` cannot
    decide between the two tokens (``tol`` = ``rel`` x the std of llama.cpp's logits there).
    The last position must agree to ``tol``."""
    tol = rel * ref.std(axis=-1)
    same = 0
    for i in range(N_NEW):
        a, b = int(ours[i].argmax()), new[i]
        if a == b:
            same += 1
            continue
        near_tie = ref[i].max() - ref[i, a] <= tol[i] and ours[i].max() - ours[i, b] <= tol[i]
        assert near_tie, (f"position {i}: mlx picks {a}, llama.cpp {b}; llama.cpp margin "
                          f"{ref[i].max() - ref[i, a]:.3f}, mlx margin {ours[i].max() - ours[i, b]:.3f} "
                          f"(tol {tol[i]:.3f})")
    assert same >= NATIVE_MIN_SAME * N_NEW, f"only {same}/{N_NEW} greedy tokens agree"
    last = float(np.abs(ours[-1] - ref[-1]).max())
    assert last <= tol[-1], f"last-position max-abs logit difference {last:.4g} > {tol[-1]:.4g}"


def native_rel(path: Path) -> float:
    float_ids = {int(t) for t in FLOAT_TYPES}
    quantized = any(ty not in float_ids for name, ty in tensor_types(path).items() if not name.endswith("norm.weight"))
    return NATIVE_REL_QUANT if quantized else NATIVE_REL_FLOAT


@functools.lru_cache(maxsize=4)
def gguf_metadata(path: Path) -> dict:
    return read_gguf(path)[1]


@functools.lru_cache(maxsize=2)
def gguf_reader(path: Path):
    """llama.cpp's Python reader (slow on a large vocabulary: parse once per file)."""
    return gguf.GGUFReader(str(path))


def check_tokenizer(path: Path, tok, extra: list[str] = ()) -> None:
    """Our tokenizer's encode equals llama.cpp's tokenize (with and without BOS/special handling)."""
    llm = llama(path, vocab_only=True)
    meta = gguf_metadata(path)
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = _meta_scalar(meta, "tokenizer.ggml.token_type")
    control = [t for t, ty in zip(tokens, types) if ty == 3][:4]
    texts = [
        "Hello world",
        "The year 2024 had 365 days; pi is 3.14159, not 3.15!",
        "héllo wörld — naïve café, 日本語のテキスト, emoji 🤖🎉",
        "  two  spaces,\ttab, trailing space \nnew line\n\n\nend",
        "don't we'll THEY'RE x=y+1 {\"json\": [1, 2]}",
        *(f"{c}user\nHi there{c}" for c in control),
        *extra,
    ]
    for text in texts:
        for add_special in (False, True):
            ours = list(tok.encode(text, add_special_tokens=add_special))
            ref = llama_tokenize(llm, text, add_special)
            assert ours == ref, f"{path.name}: tokenization of {text!r} (add_special={add_special}) differs:\n{ours}\n{ref}"


# --------------------------------------------------------------------------- the files under test


def _gguf_params():
    params = [pytest.param("embedded", id="embedded-smollm2", marks=pytest.mark.integration)]
    for p in os.environ.get("TUI_TRAINER_PARITY_GGUF", "").split(","):
        if p.strip():
            params.append(pytest.param(p.strip(), id=Path(p.strip()).name, marks=pytest.mark.integration))
    return params


_LOADED: dict[str, tuple] = {}


@pytest.fixture(scope="module", params=_gguf_params())
def gguf_model(request):
    """(path, model, tokenizer) for each GGUF under test, loaded once per module."""
    path = default_model_path() if request.param == "embedded" else Path(request.param)
    assert path.is_file(), f"TUI_TRAINER_PARITY_GGUF names a missing file: {path}"
    key = str(path)
    if key not in _LOADED:
        _LOADED.clear()  # one big model in memory at a time
        model, tok = load_policy(key, quantized=False)
        _LOADED[key] = (path, model, tok)
    yield _LOADED[key]


def test_tokenizer_matches_llama_cpp(gguf_model):
    path, _, tok = gguf_model
    check_tokenizer(path, tok)


def test_greedy_parity_exact_weights(gguf_model, tmp_path):
    path, model, tok = gguf_model
    prompt = prompt_ids(tok)
    f32 = write_f32_copy(gguf_reader(path), tmp_path / "f32.gguf")
    new, ref = llama_greedy(f32, prompt, f32_kv=True)
    f32.unlink()
    assert_exact_parity(mlx_logits(model, prompt, new), ref, new)


def test_greedy_parity_native(gguf_model):
    path, model, tok = gguf_model
    prompt = prompt_ids(tok)
    new, ref = llama_greedy(path, prompt, f32_kv=False)
    assert_native_parity(mlx_logits(model, prompt, new), ref, new, native_rel(path))


def test_dequantized_tensors_equal_gguf_reference(gguf_model):
    """Every tensor MLX reads equals the gguf package's dequantization of it, bit for bit."""
    path, _, _ = gguf_model
    weights, _ = read_gguf(path)
    ours = dequantize_all(weights)
    for t in gguf_reader(path).tensors:
        if t.name.startswith("rope_freqs"):
            continue
        ref = dequantized(t)
        got = np.array(ours[t.name])
        assert got.shape == ref.shape, t.name
        assert np.array_equal(got, ref), f"{t.name} ({t.tensor_type.name}): max-abs {np.abs(got - ref).max()}"


# --------------------------------------------------------------------------- GGUFs the tests write


def _llama_metadata(w, *, hidden, ffn, heads, kv_heads, vocab, layers=2):
    add_model_metadata(w, "llama", hidden=hidden, ffn=ffn, heads=heads, kv_heads=kv_heads, vocab=vocab, layers=layers)


def _random_llama_tensors(rng, types, *, hidden, ffn, heads, kv_heads, vocab, layers=2, tied=False):
    """A random llama; ``types`` is cycled over the matmul weights so that every listed type appears."""
    kv = kv_heads * hidden // heads
    cycle = iter(list(types) * 100)

    def r(*shape, scale):
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    out = [("token_embd.weight", r(vocab, hidden, scale=1.0), next(cycle))]
    for i in range(layers):
        out += [
            (f"blk.{i}.attn_norm.weight", 1 + r(hidden, scale=0.1), T.F32),
            (f"blk.{i}.attn_q.weight", r(hidden, hidden, scale=0.3), next(cycle)),
            (f"blk.{i}.attn_k.weight", r(kv, hidden, scale=0.3), next(cycle)),
            (f"blk.{i}.attn_v.weight", r(kv, hidden, scale=0.3), next(cycle)),
            (f"blk.{i}.attn_output.weight", r(hidden, hidden, scale=0.2), next(cycle)),
            (f"blk.{i}.ffn_norm.weight", 1 + r(hidden, scale=0.1), T.F32),
            (f"blk.{i}.ffn_gate.weight", r(ffn, hidden, scale=0.2), next(cycle)),
            (f"blk.{i}.ffn_up.weight", r(ffn, hidden, scale=0.2), next(cycle)),
            (f"blk.{i}.ffn_down.weight", r(hidden, ffn, scale=0.2), next(cycle)),
        ]
    out.append(("output_norm.weight", 1 + r(hidden, scale=0.1), T.F32))
    if not tied:
        out.append(("output.weight", r(vocab, hidden, scale=0.5), next(cycle)))
    return out


def _check_file(path: Path, *, tmp_path: Path, extra_texts=()) -> float:
    """Tokenizer, exact-weights and native parity, and the quantized MLX path, on one small file; returns the
    exact-weights run's largest logit difference."""
    model, tok = load_gguf(path)
    check_tokenizer(path, tok, extra_texts)
    prompt = list(tok.encode("the quick brown fox jumps over 2024 lazy dogs"))
    f32 = write_f32_copy(gguf.GGUFReader(str(path)), tmp_path / f"{path.stem}.f32.gguf")
    new, ref = llama_greedy(f32, prompt, f32_kv=True)
    ours = mlx_logits(model, prompt, new)
    assert_exact_parity(ours, ref, new)
    worst = float(np.abs(ours - ref).max())
    assert worst <= EXACT_TOL, f"max-abs logit difference over the {N_NEW} positions {worst:.4g} > {EXACT_TOL}"
    new_native, ref_native = llama_greedy(path, prompt, f32_kv=False)
    assert_native_parity(mlx_logits(model, prompt, new_native), ref_native, new_native, native_rel(path))
    # keep_quantized=True (the GPU path): MLX's quantized matmuls on the same weights agree with the f32 model
    qmodel, _ = load_gguf(path, keep_quantized=True)
    assert np.abs(mlx_logits(qmodel, prompt, new) - ours).max() < 1e-3
    return worst


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A SentencePiece BPE model (byte fallback, like llama's) trained on a small corpus: (processor, pieces,
    scores, GGUF token types)."""
    import sentencepiece as spm_lib

    tmp = tmp_path_factory.mktemp("spm")
    rng = np.random.default_rng(0)
    words = ("the quick brown fox jumps over the lazy dog while seven wizards hex a jolly quiz about "
             "2024 numbers, 31415 digits and naïve cafés").split()
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(400)), encoding="utf-8")
    spm_lib.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp / "sp"), vocab_size=320, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    sp = spm_lib.SentencePieceProcessor(model_file=str(tmp / "sp.model"))
    ids = range(sp.get_piece_size())

    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    def gguf_type(i):
        return 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i) else 1

    return sp, [sp.id_to_piece(i) for i in ids], [sp.get_score(i) for i in ids], [gguf_type(i) for i in ids]


def _spm_metadata(w, spm, dims, *, space_prefix=True):
    _llama_metadata(w, **dims)
    _spm_tokenizer_metadata(w, spm, space_prefix=space_prefix)


SPM_TEXTS = ["the quick brown fox", "digits 31415 and 2024!", "a", "   ", "<s>the fox</s> jumps",
             "ünïcödé → 日本", " leading space", "two\nlines\n\n"]


def test_written_llama_with_every_supported_tensor_type(spm, tmp_path):
    """A tiny random 2-layer llama with tensors in F32, F16, Q8_0, Q4_0 and Q4_1 (mx.load's native types)."""
    dims = dict(hidden=64, ffn=128, heads=4, kv_heads=2, vocab=len(spm[1]))
    types = [T.Q4_0, T.F16, T.Q8_0, T.Q4_1, T.F32]
    tensors = _random_llama_tensors(np.random.default_rng(0), types, **dims)
    assert {t for _, _, t in tensors} == {T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1}
    path = write_gguf(tmp_path / "tiny-mixed.gguf", "llama", lambda w: _spm_metadata(w, spm, dims), tensors)
    _check_file(path, tmp_path=tmp_path)


def test_written_sentencepiece_llama_and_k_quants(spm, tmp_path):
    """The "llama" (SentencePiece) tokenizer path against llama.cpp and sentencepiece itself; parity of a
    tiny random llama with tied embeddings written as F32, and as llama.cpp's own Q4_K_M of it (K-quants
    and Q5_0/Q6_K are read through the gguf package; only the native run checks those against llama.cpp's
    kernels, since the exact-weights copy is dequantized by the same package)."""
    sp = spm[0]
    dims = dict(hidden=256, ffn=512, heads=4, kv_heads=2, vocab=len(spm[1]))
    tensors = _random_llama_tensors(np.random.default_rng(1), [T.F32], tied=True, **dims)
    path = write_gguf(tmp_path / "tiny-spm.gguf", "llama", lambda w: _spm_metadata(w, spm, dims), tensors)
    _, tok = load_gguf(path)
    for text in SPM_TEXTS:
        if "<s>" not in text:  # sentencepiece itself does not parse control tokens in text
            assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text
    _check_file(path, tmp_path=tmp_path, extra_texts=SPM_TEXTS)

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    qpath = tmp_path / "tiny-spm.Q4_K_M.gguf"
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(path).encode(), str(qpath).encode(), ctypes.byref(params))
    assert rc == 0
    kinds = set(tensor_types(qpath).values())
    assert int(T.Q4_K) in kinds and int(T.Q6_K) in kinds, kinds
    _check_file(qpath, tmp_path=tmp_path)


def test_sentencepiece_without_space_prefix(spm, tmp_path):
    """tokenizer.ggml.add_space_prefix = false: no "▁" in front of the text, as in llama.cpp."""
    dims = dict(hidden=32, ffn=64, heads=2, kv_heads=1, vocab=len(spm[1]))
    tensors = _random_llama_tensors(np.random.default_rng(2), [T.F32], tied=True, **dims)
    path = write_gguf(tmp_path / "tiny-spm-noprefix.gguf", "llama",
                      lambda w: _spm_metadata(w, spm, dims, space_prefix=False), tensors)
    _, tok = load_gguf(path)
    check_tokenizer(path, tok, SPM_TEXTS)
    assert tok.encode("fox", add_special_tokens=False) != tok.encode(" fox", add_special_tokens=False)


def test_written_llama_with_rope_frequency_factors(spm, tmp_path):
    """Llama 3.1+ GGUFs carry RoPE frequency factors in a ``rope_freqs.weight`` tensor; llama.cpp divides
    each pair's angle by its factor, and so must we."""
    dims = dict(hidden=64, ffn=128, heads=2, kv_heads=1, vocab=len(spm[1]))
    tensors = _random_llama_tensors(np.random.default_rng(3), [T.F32, T.Q8_0], **dims)
    factors = np.linspace(1.0, 40.0, (64 // 2) // 2, dtype=np.float32)  # head_dim 32: 16 pairs
    path = write_gguf(tmp_path / "tiny-rope-freqs.gguf", "llama", lambda w: _spm_metadata(w, spm, dims),
                      tensors + [("rope_freqs.weight", factors, T.F32)])
    _check_file(path, tmp_path=tmp_path)
    # the factors matter here: the same weights without them give other logits
    plain = write_gguf(tmp_path / "tiny-no-factors.gguf", "llama", lambda w: _spm_metadata(w, spm, dims), tensors)
    (with_f, tok), (without, _) = load_gguf(path), load_gguf(plain)
    ids = list(tok.encode("the quick brown fox jumps over 2024 lazy dogs while seven wizards"))
    assert float(mx.abs(with_f(mx.array([ids])) - without(mx.array([ids]))).max()) > 0.1


# --------------------------------------------------------------------------- qwen2, qwen3, gemma3

BPE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_TEXTS = ["DON'T stop: 1234567 + 89 = 1234656!! read file.json in $HOME (foo)\n\n\nnext", "x=[1,2,3]; y={'a': 10.5}\n\n  z  ", "naïve café 日本 🤖",
             "it's 2024!!! {\"a\": [1, 2]} != 3.14159 => ..."]


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE vocabulary (tokens, merges) trained on a small corpus with numbers and symbols."""
    from gguf_build import train_bpe

    rng = np.random.default_rng(0)
    words = ("the quick brown fox jumps over the lazy dog it's we'll DON'T 2024 1234 365 3.14159 != == => "
             "!!! ... {\"a\": [1, 2]} naïve café 日本語 file.json $HOME (foo) 'T").split()
    corpus = [" ".join(rng.choice(words, size=10)) + "\n" for _ in range(300)]
    return train_bpe(corpus, 400, BPE_SPECIAL)


def _bpe_tokenizer_metadata(w, bpe, *, pre: str | None = "qwen2", add_bos: bool | None = False):
    """A Qwen-style GGUF vocabulary: gpt2 BPE, no BOS added, <|im_end|> as EOS."""
    tokens, merges = bpe
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in BPE_SPECIAL else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    if add_bos is not None:
        w.add_add_bos_token(add_bos)


def _write_model(path: Path, arch: str, dims: dict, tokenizer, *, types, seed: int, tied=False, extra=None) -> Path:
    from gguf_build import add_model_metadata, random_model_tensors

    tensors = random_model_tensors(arch, np.random.default_rng(seed), types, tied=tied, **dims)

    def fill(w):
        add_model_metadata(w, arch, extra=extra, **dims)
        tokenizer(w)

    return write_gguf(path, arch, fill, tensors)


def test_written_qwen2(bpe, tmp_path):
    """A tiny random Qwen2 (q/k/v biases, NEOX RoPE, qwen2 split rule) in F32 and Q8_0, against llama.cpp."""
    dims = dict(hidden=64, ffn=128, heads=4, kv_heads=2, vocab=len(bpe[0]), layers=2, rope_base=1e6)
    path = _write_model(tmp_path / "tiny-qwen2.gguf", "qwen2", dims, lambda w: _bpe_tokenizer_metadata(w, bpe),
                        types=[T.Q8_0, T.F32], seed=10)
    _check_file(path, tmp_path=tmp_path, extra_texts=BPE_TEXTS)


def test_written_qwen3(bpe, tmp_path):
    """A tiny random Qwen3 (per-head q/k RMSNorm, head size 32 != hidden / heads, tied embeddings)."""
    dims = dict(hidden=64, ffn=128, heads=4, kv_heads=2, head_dim=32, vocab=len(bpe[0]), layers=2, rope_base=1e6)
    path = _write_model(tmp_path / "tiny-qwen3.gguf", "qwen3", dims, lambda w: _bpe_tokenizer_metadata(w, bpe),
                        types=[T.F32, T.Q8_0], seed=11, tied=True)
    _check_file(path, tmp_path=tmp_path)


def _spm_tokenizer_metadata(w, spm, *, space_prefix=True):
    _, pieces, scores, types = spm
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(space_prefix)


def test_written_gemma3(spm, tmp_path):
    """A tiny random Gemma 3 as llama.cpp's converter writes it: norms stored as weight + 1, four norms a
    block plus q/k norms, sqrt(hidden) embedding scale, GELU, tied embeddings, 6 layers of which the first 5
    see a sliding window of 5 tokens (local RoPE base 10000) and the 6th everything (base 1e6, linear RoPE
    scaling 8, as Gemma 3 4B+), head size 32 with 4 heads on a hidden size of 96."""
    def extra(w):
        w.add_sliding_window(5)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(8.0)

    dims = dict(hidden=96, ffn=192, heads=4, kv_heads=2, head_dim=32, vocab=len(spm[1]), layers=6, rope_base=1e6)
    path = _write_model(tmp_path / "tiny-gemma3.gguf", "gemma3", dims,
                        lambda w: _spm_tokenizer_metadata(w, spm, space_prefix=False),
                        types=[T.F32, T.Q8_0], seed=12, tied=True, extra=extra)
    worst = _check_file(path, tmp_path=tmp_path, extra_texts=SPM_TEXTS)
    # Tighter on this file: what is left is llama.cpp's GELU, which reads its result from an f16 table (f16
    # input, f16 output; emulating that in MLX brings the gap down to 2e-4), measured 1.4e-3. mlx-lm's own
    # Gemma 3 body, which rounds sqrt(hidden) to bf16 (9.8125 for 9.798 here), is 6.3e-3 away.
    assert worst <= 3e-3, f"max-abs logit difference {worst:.4g} > 3e-3"


def test_every_known_pre_tokenizer_matches_llama_cpp(bpe, tmp_path):
    """Every ``tokenizer.ggml.pre`` we accept (and none at all, llama.cpp's "default") splits text as llama.cpp
    does, BOS added or not by the same default; and the split rules differ on these texts, so a name mapped
    to the wrong rule would show."""
    from tui_trainer.engine.gguf import _PRE_GROUPS

    dims = dict(hidden=32, ffn=64, heads=2, kv_heads=1, vocab=len(bpe[0]), layers=1)
    by_group = []
    for names, _ in _PRE_GROUPS:
        seen = set()
        for pre in (*names, None) if "default" in names else names:
            path = _write_model(tmp_path / f"pre-{pre}.gguf", "qwen2", dims,
                                lambda w: _bpe_tokenizer_metadata(w, bpe, pre=pre, add_bos=None), types=[T.F32], seed=0)
            _, tok = load_gguf(path)
            check_tokenizer(path, tok, BPE_TEXTS)
            seen.add(tuple(tuple(tok.encode(t)) for t in BPE_TEXTS))
            path.unlink()
        assert len(seen) == 1, names  # one rule per group
        by_group.append(seen.pop())
    same = [(a[0][0], b[0][0]) for i, a in enumerate(_PRE_GROUPS) for j, b in enumerate(_PRE_GROUPS)
            if i < j and by_group[i] == by_group[j]]
    assert not same, f"these split rules tokenize the test texts alike: {same}"
