"""Builders shared by the tests: a tiny random llama saved as an mlx-lm model directory."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

SPECIALS = ["<pad>", "<eos>", "<bos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant: {% endif %}"
)


def tiny_args(vocab_size: int, **over) -> dict:
    args = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=vocab_size,
                rope_traditional=False, tie_word_embeddings=True, max_position_embeddings=512)
    args.update(over)
    return args


def make_tiny_model_dir(path: Path, seed: int = 0, eos_is_pad: bool = False, alphabet: str | None = None,
                        **over) -> Path:
    """A random 2-layer llama (or another mlx-lm family: ``model_type=``, with that family's extra
    arguments in ``over``) + a byte-level BPE tokenizer, loadable by mlx_lm.load(path).
    ``alphabet``: only these (ASCII) characters in the vocabulary, so the model writes only them."""
    import importlib

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    if alphabet is not None:
        # GPT-2's byte -> symbol map (what ByteLevel uses): printable bytes are themselves
        shown = [*range(33, 127), *range(161, 173), *range(174, 256)]
        symbol = {b: chr(b) for b in shown} | {b: chr(256 + i) for i, b in enumerate(sorted(set(range(256)) - set(shown)))}
        byte_chars = [symbol[b] for b in sorted(set(alphabet.encode("ascii")))]
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab, [], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<eos>", "bos_token": "<bos>", "pad_token": "<eos>" if eos_is_pad else "<pad>",
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
    }))
    (path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<eos>", "bos_token": "<bos>"}))
    args = tiny_args(len(vocab), **over)
    family = importlib.import_module(f"mlx_lm.models.{args['model_type']}")
    mx.random.seed(seed)
    model = family.Model(family.ModelArgs.from_dict(args))
    mx.eval(model.parameters())
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps({**args, "eos_token_id": 1, "bos_token_id": 2}))
    return path


EPS32 = 2.0 ** -23  # float32 machine epsilon


def step0_kl_bound(metrics: dict) -> float:
    """How far from 0 the step-0 KL may be on any BLAS kernel.

    At step 0 the policy is the reference, so the KL (a sum over a sequence of log-prob
    differences between the KV-cached decode and the full forward) is rounding error only:
    each difference is a few float32 ulps of the log-probs involved. Their sum per sequence is
    about entropy x length, and the factor 32 covers the error the layers accumulate.
    """
    return 32 * EPS32 * metrics["response_length"] * max(metrics["entropy"], 1.0)


def screen_text(app) -> str:
    """The app's current screen as plain text, one line per row.

    Test-only: it renders through Textual's compositor, a private part of Textual (the public
    ``export_screenshot`` renders the same thing, as SVG)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)
