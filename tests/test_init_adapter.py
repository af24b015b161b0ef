"""SFT -> PPO: ``init_adapter`` (alias ``resume_adapter_file``) starts the policy from an mlx-lm adapter.

The SFT adapter is made and saved the way ``mlx_lm lora`` does (``linear_to_lora_layers``, then
``adapters.safetensors`` = the trainable parameters, ``adapter_config.json`` through mlx-lm's
``save_config``), with random non-zero weights standing in for SFT training. The reference for
the policy's step-0 logits is ``mlx_lm.load(model, adapter_path=...)``; for the PPO reference,
``mlx_lm.load(model)``.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from tui_trainer import events as ev
from tui_trainer.cli import main
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.engine.models import load_policy
from tui_trainer.engine.policy import Policy, adapter_off
from tui_trainer.engine.trainer import Trainer
from tui_trainer.errors import ConfigError, ModelError
from tui_trainer.run import build_run

from helpers import CHAT_TEMPLATE, SPECIALS, step0_kl_bound

TOKENS = mx.array([[5, 40, 41, 42, 43, 10, 77, 78, 79, 12]])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["alpha", "beta", "gamma", "delta"]))
    return path


@pytest.fixture(scope="module")
def sft_adapter(tiny_dir, tmp_path_factory):
    """An mlx-lm LoRA adapter (last block, rank 4, scale 10) with random weights, saved as mlx-lm saves it."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    path = tmp_path_factory.mktemp("sft") / "adapters"
    path.mkdir()
    model, _ = load(str(tiny_dir))
    model.freeze()
    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 1, lora)
    mx.random.seed(7)
    model.update(tree_map(lambda p: 0.1 * mx.random.normal(p.shape), model.trainable_parameters()))
    mx.save_safetensors(str(path / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    save_config({"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": lora, "model": str(tiny_dir)},
                path / "adapter_config.json")
    return path


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows into llama.cpp's order, as convert_hf_to_gguf.py (LlamaModel.permute) writes them."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dir, tmp_path_factory):
    """The tiny Hugging Face-layout llama of ``tiny_dir`` as a GGUF, written the way llama.cpp converts it."""
    gguf = pytest.importorskip("gguf")
    args = json.loads((tiny_dir / "config.json").read_text())
    weights = {k: np.array(v) for k, v in mx.load(str(tiny_dir / "model.safetensors")).items()}
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"block_count": args["num_hidden_layers"], "context_length": 512,
                       "embedding_length": args["hidden_size"], "feed_forward_length": args["intermediate_size"],
                       "attention.head_count": args["num_attention_heads"],
                       "attention.head_count_kv": args["num_key_value_heads"]}.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", args["rms_norm_eps"])
    ids = json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["vocab"]  # the same byte-level BPE
    vocab = sorted(ids, key=ids.get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    w.add_token_merges([])
    w.add_eos_token_id(1)
    w.add_bos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for i in range(args["num_hidden_layers"]):
        for hf, ours in names.items():
            t = weights[f"model.layers.{i}.{hf}.weight"]
            if ours in ("attn_q", "attn_k"):
                t = llama_cpp_permute(t, args["num_attention_heads" if ours == "attn_q" else "num_key_value_heads"])
            w.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def config(tiny_dir, prompts_file, run_dir, adapter_path, **adapter) -> Config:
    return Config(model=str(tiny_dir), run_dir=str(run_dir), data=DataConfig(path=str(prompts_file)),
                  init_adapter=str(adapter_path), steps=1, batch_size=2, num_samples=2, max_new_tokens=6,
                  minibatch_size=4, save_every=0, seed=3,
                  adapter=AdapterConfig(**{"rank": 4, "scale": 10.0, "layers": 1, **adapter}),
                  judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer:char_length"})])


class StepZeroProbe(Trainer):
    """Records the policy's and the reference's logits on TOKENS before the first update."""

    def train_step(self):
        if self.step == 0:
            self.policy_logits = self.policy.model(TOKENS)
            with adapter_off(self.policy) as base:
                self.reference_logits = base(TOKENS)
            mx.eval(self.policy_logits, self.reference_logits)
        return super().train_step()


@pytest.mark.parametrize("policy_file", ["mlx-lm directory", "gguf"])
def test_policy_starts_from_the_sft_adapter_and_the_reference_is_the_base(tiny_dir, tiny_gguf, prompts_file,
                                                                            sft_adapter, tmp_path, policy_file):
    """The adapter was trained by mlx-lm on the Hugging Face layout; the policy is that model as an
    mlx-lm directory, or as a GGUF (llama.cpp's Q/K row order, traditional RoPE)."""
    from mlx_lm import load

    adapted, _ = load(str(tiny_dir), adapter_path=str(sft_adapter))
    base, _ = load(str(tiny_dir))
    want_policy, want_reference = adapted(TOKENS), base(TOKENS)
    # the adapter changes the model by far more than float32 rounding: the comparisons below can fail
    assert mx.abs(want_policy - want_reference).max().item() > 1e-2

    events: list = []
    policy_model = tiny_dir if policy_file == "mlx-lm directory" else tiny_gguf
    trainer = build_run(config(policy_model, prompts_file, tmp_path / "run", sft_adapter), observer=events.append,
                        trainer_class=StepZeroProbe)
    state = trainer.run()
    assert state.status == "finished"
    # same weights, same mlx-lm forward: equal to float32 rounding of logits of size ~1
    assert mx.abs(trainer.policy_logits - want_policy).max().item() < 1e-5
    assert mx.abs(trainer.reference_logits - want_reference).max().item() < 1e-5
    # the rollout of step 1 came from the SFT policy, the KL from the base: not the zero of a fresh adapter
    metrics = [e.values for e in events if isinstance(e, ev.StepMetrics)][0]
    assert metrics["kl"] > 100 * step0_kl_bound(metrics)
    logs = [e.message for e in events if isinstance(e, ev.LogMessage)]
    assert any("adapter initialised from" in m for m in logs)
    assert any("rows permuted to the GGUF's" in m for m in logs) == (policy_file == "gguf")


def test_the_gguf_layout_matters(tiny_dir, tiny_gguf, sft_adapter):
    """Without llama.cpp's Q/K permutation the Hugging Face-layout adapter computes another model
    (so the GGUF case above can fail); an adapter trained on the GGUF itself is loaded as it is."""
    from mlx_lm import load

    from tui_trainer.engine.adapters import load_init_adapter, trained_on_gguf

    want = load(str(tiny_dir), adapter_path=str(sft_adapter))[0](TOKENS)
    policy = Policy(load_policy(str(tiny_gguf))[0], AdapterConfig(rank=4, scale=10.0, layers=1))
    load_init_adapter(policy, str(sft_adapter), gguf_policy=False)
    assert mx.abs(policy.model(TOKENS) - want).max().item() > 1e-3
    assert trained_on_gguf({"model": "/m/tiny.gguf"}) and trained_on_gguf({"model": None, "tui_trainer": {}})
    assert not trained_on_gguf({"model": "mlx-community/Llama-3.2-1B-Instruct-bf16"}) and not trained_on_gguf({})


def test_a_file_path_works_like_mlx_lm_resume_adapter_file(tiny_dir, sft_adapter):
    from tui_trainer.engine.adapters import load_init_adapter

    model, _ = load_policy(str(tiny_dir))
    policy = Policy(model, AdapterConfig(rank=4, scale=10.0, layers=1))
    saved = mx.load(str(sft_adapter / "adapters.safetensors"))
    assert load_init_adapter(policy, str(sft_adapter / "adapters.safetensors")) == len(saved) == 14  # 7 linears
    mine = policy.adapter_weights()
    assert set(mine) == set(saved) and all(mx.array_equal(mine[k], saved[k]).item() for k in saved)


@pytest.mark.parametrize("adapter,error,says", [
    ({"rank": 8}, ConfigError, ["has shape (", ", 4), this run's adapter needs (", ", 8)", "rank 4"]),
    ({"layers": 2}, ConfigError, ["no tensor for model.layers.0.", "num_layers 1"]),
    ({"keys": ["self_attn.q_proj"]}, ConfigError, ["is not a parameter of this run's adapter"]),
    ({"scale": 20.0}, ConfigError, ["trained with scale 10", "adapter.scale is 20"]),
    ({"type": "dora"}, ConfigError, ["a lora adapter, but adapter.type is dora"]),
])
def test_an_adapter_that_does_not_fit_is_one_line(tiny_dir, sft_adapter, adapter, error, says):
    from tui_trainer.engine.adapters import load_init_adapter

    model, _ = load_policy(str(tiny_dir))
    policy = Policy(model, AdapterConfig(**{"rank": 4, "scale": 10.0, "layers": 1, **adapter}))
    with pytest.raises(error) as info:
        load_init_adapter(policy, str(sft_adapter))
    message = str(info.value)
    assert "\n" not in message and all(s in message for s in says), message


def test_cli_refuses_a_misfit_adapter_with_exit_2(tiny_dir, prompts_file, sft_adapter, tmp_path):
    err = io.StringIO()
    argv = ["train", "--headless", "--model", str(tiny_dir), "--data", str(prompts_file), "--run-dir",
            str(tmp_path / "run"), "--steps", "1", "--init-adapter", str(sft_adapter), "--set", "adapter.rank=8",
            "--set", "adapter.scale=10", "--set", "adapter.layers=1"]
    with redirect_stderr(err):
        assert main(argv) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tui-trainer: error: init_adapter") and "rank 4" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_adapter_stops_before_the_run_dir_is_made(tiny_dir, prompts_file, tmp_path):
    trainer = build_run(config(tiny_dir, prompts_file, tmp_path / "run", tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="init_adapter .*nowhere: no such file or folder"):
        trainer.run()
    assert not (tmp_path / "run").exists()


def test_peft_short_module_names_become_mlx_lm_keys(tiny_dir):
    model, _ = load_policy(str(tiny_dir))
    policy = Policy(model, AdapterConfig(rank=4, layers=1, keys=["q_proj", "v_proj"]))
    assert policy.lora_parameters["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    adapted = {k.rsplit(".", 1)[0] for k in policy.adapter_weights()}
    assert adapted == {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    model, _ = load_policy(str(tiny_dir))
    assert Policy(model, AdapterConfig(rank=4, layers=1, keys=["all-linear"])).lora_parameters.get("keys") is None
    model, _ = load_policy(str(tiny_dir))
    with pytest.raises(ConfigError, match="'qv_proj' names no linear module"):
        Policy(model, AdapterConfig(rank=4, layers=1, keys=["qv_proj"]))
