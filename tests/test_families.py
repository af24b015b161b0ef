"""Any mlx-lm text model trains exactly (issue 13): for each family, built from mlx-lm's own model
classes as a tiny random instance, the update's recomputed log-probs equal the rollout's, the
reference (adapter off) equals a fresh base model, and one PPO step keeps the step-0 invariants.
A family our batched forward cannot reproduce is refused with one line."""

from __future__ import annotations

import importlib
import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.engine.family import check
from tui_trainer.engine.policy import Policy, adapter_off, evaluate, forward, reference_logprobs
from tui_trainer.engine.rollout import sample
from tui_trainer.errors import ModelError
from tui_trainer.run import build_run

from helpers import make_tiny_model_dir, step0_kl_bound

V = 64
COMMON = dict(hidden_size=32, num_hidden_layers=4, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=V, max_position_embeddings=512,
              tie_word_embeddings=True, head_dim=8, rope_theta=10000.0, rope_traditional=False)
FAMILIES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    # soft-capped attention scores and logits; grouped-query scores of shape (B, kv, rep, L, S)
    "gemma2": dict(attn_logit_softcapping=50.0, final_logit_softcapping=2.0, query_pre_attn_scalar=8),
    # sliding-window layers (window 4 < prompt + response) between global ones
    "gemma3_text": dict(sliding_window=4, sliding_window_pattern=2, query_pre_attn_scalar=8),
    "phi3": dict(tie_word_embeddings=False),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
                      moe_intermediate_size=16, norm_topk_prob=True),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False),
}
MOE = {"qwen3_moe", "mixtral"}
PROMPTS = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]  # different lengths: left padding
TOL = 1e-4  # the bound; float32 rounding of these tiny models is ~1e-6


def build(family: str, seed: int = 0):
    module = importlib.import_module(f"mlx_lm.models.{family}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict({**COMMON, **FAMILIES[family], "model_type": family}))
    mx.eval(model.parameters())
    return model


def perturb_adapter(policy: Policy) -> None:
    """Give every LoRA B a random value (at step 0 they are zero), so the policy differs from its base."""
    mx.random.seed(5)
    weights = {k: (mx.random.normal(v.shape) * 0.3 if k.endswith("lora_b") else v)
               for k, v in tree_flatten(policy.model.trainable_parameters())}
    policy.model.update(tree_unflatten(list(weights.items())))


def rollout(model):
    return sample(model, PROMPTS, num_samples=2, max_new_tokens=10, temperature=1.0, eos_ids=[], pad_id=0, seed=3)


def max_masked(a, b, mask) -> float:
    return float(mx.abs((a - b) * mask).max().item())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_update_and_reference_reproduce_the_rollout_and_the_base(family):
    base = build(family)
    policy = Policy(build(family), AdapterConfig(rank=4, layers=-1, scale=2.0))
    kinds = {type(m).__name__ for _, m in policy.model.named_modules()}
    if family in MOE:
        assert "LoRASwitchLinear" in kinds  # the experts carry adapters too

    # step 0 (LoRA B = 0): ratio 1 and KL to the reference 0
    roll = rollout(policy.model)
    P = roll.prompt_width
    logp, _, _ = evaluate(policy, roll.tokens, roll.left_pad, P, 1.0, with_values=False)
    assert max_masked(logp, roll.logprobs, roll.response_mask) < TOL
    ref = reference_logprobs(policy, roll.tokens, roll.left_pad, P, 1.0)
    assert max_masked(ref, roll.logprobs, roll.response_mask) < TOL

    # a trained adapter: the update still reproduces the rollout, and adapter-off is the base model
    perturb_adapter(policy)
    roll = rollout(policy.model)
    P = roll.prompt_width
    logp, _, _ = evaluate(policy, roll.tokens, roll.left_pad, P, 1.0, with_values=False)
    assert max_masked(logp, roll.logprobs, roll.response_mask) < TOL
    _, base_logits = forward(base, roll.tokens, roll.left_pad, P)
    with adapter_off(policy) as off:
        _, off_logits = forward(off, roll.tokens, roll.left_pad, P)
    assert float(mx.abs(off_logits - base_logits).max().item()) < TOL
    _, on_logits = forward(policy.model, roll.tokens, roll.left_pad, P)
    assert float(mx.abs(on_logits - base_logits).max().item()) > 1e-2  # the adapter does change the policy


@pytest.mark.parametrize("family", list(FAMILIES))
def test_update_logits_are_the_models_own(family):
    """Each row of a padded batch gets the logits the model's own forward gives it alone
    (soft-capping, scaling and tied heads included)."""
    model = build(family)
    row = PROMPTS[0] + [20, 21, 22]
    own = model(mx.array([row]))[0].astype(mx.float32)
    tokens = mx.array([[0, 0] + row + [0]])  # left padding 2; the last column is only ever a target
    _, logits = forward(model, tokens, mx.array([2]), 3)  # logits[:, t] from the state at column 2 + t
    assert logits.shape[1] == len(row)
    assert float(mx.abs(logits[0] - own).max().item()) < TOL


@pytest.mark.parametrize("family", ["gemma2", "qwen3_moe"])
def test_one_ppo_step_keeps_the_step0_invariants(family, tmp_path):
    """The issue's measurement: one PPO step of a tiny model of the family (gemma2 crashed here)."""
    model_dir = make_tiny_model_dir(tmp_path / "model", model_type=family, num_hidden_layers=2,
                                    head_dim=8, rope_theta=10000.0, **FAMILIES[family])
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["alpha", "beta", "gamma", "delta"]))
    cfg = Config(model=str(model_dir), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(data)), steps=1,
                 batch_size=2, num_samples=2, max_new_tokens=8, minibatch_size=4, ppo_epochs=1, save_every=0,
                 seed=1, adapter=AdapterConfig(rank=4, layers=-1),
                 judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer:char_length"})])
    events: list = []
    state = build_run(cfg, observer=events.append).run()
    assert state.status == "finished"
    first = [e.values for e in events if isinstance(e, ev.StepMetrics)][0]
    assert first["kl"] == pytest.approx(0.0, abs=step0_kl_bound(first))
    assert first["first_ratio"] == pytest.approx(1.0, abs=TOL)


def test_a_family_with_recurrent_layers_is_refused_with_one_line():
    from mlx_lm.models import lfm2

    args = dict(model_type="lfm2", vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, norm_eps=1e-5, conv_bias=False,
                conv_L_cache=3, block_dim=32, block_multiple_of=16, block_ffn_dim_multiplier=1.0,
                block_auto_adjust_ff_dim=False, block_ff_dim=64, full_attn_idxs=[1])
    model = lfm2.Model(lfm2.ModelArgs.from_dict(args))
    with pytest.raises(ModelError) as info:
        check(model)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model family lfm2:") and "not supported" in message
    with pytest.raises(ModelError):
        Policy(model, AdapterConfig(rank=4, layers=-1))
