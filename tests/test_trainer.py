"""The PPO loop on a tiny random model: invariants, gradients, adapter-off reference, resume, checkpoints."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec
from tui_trainer.errors import ConfigError
from tui_trainer.engine.models import load_policy
from tui_trainer.engine.policy import Policy, adapter_fused, adapter_off, evaluate, forward, token_logprobs
from tui_trainer.engine.rollout import sample
from tui_trainer.engine.trainer import trim_rows
from tui_trainer.run import build_run

from helpers import step0_kl_bound


def char_length(prompt: str, completion: str) -> float:
    """Rule used by these tests: characters / 20 (varies between samples from the first step)."""
    return len(completion) / 20


SEEN: list[str] = []  # the prompts seen_length was asked about


def seen_length(prompt: str, completion: str) -> float:
    SEEN.append(prompt)
    return char_length(prompt, completion)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "kappa", "lambda", "sigma", "omega", "zeta", "theta"]
    path.write_text("".join(json.dumps({"prompt": f"say {w} {i}"}) + "\n" for i, w in enumerate(words * 2)))
    return path


def make_config(tiny_dir, prompts_file, run_dir, **over) -> Config:
    cfg = Config(
        model=str(tiny_dir), run_dir=str(run_dir), data=DataConfig(path=str(prompts_file)),
        steps=3, batch_size=4, num_samples=2, max_new_tokens=10, minibatch_size=4, ppo_epochs=2,
        actor_lr=1e-3, critic_lr=1e-3, save_every=0, seed=1, adapter=AdapterConfig(rank=4, layers=1),
        judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer:char_length"})],
        warmup_ratio=0,  # runs of 2 and 4 steps are compared: the default warm-up's length would differ
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def run(cfg, **kw):
    events: list = []
    trainer = build_run(cfg, observer=events.append, **kw)
    state = trainer.run()
    metrics = [e.values for e in events if isinstance(e, ev.StepMetrics)]
    return trainer, state, metrics, events


def test_first_step_invariants_and_metrics_file(tiny_dir, prompts_file, tmp_path):
    trainer, state, metrics, events = run(make_config(tiny_dir, prompts_file, tmp_path / "run", steps=2))
    assert state.status == "finished"
    first = metrics[0]
    # step 0: policy == reference (LoRA B is zero), so KL = 0 (to float32 rounding, whatever the
    # BLAS kernel) and the first minibatch has ratio 1
    assert first["kl"] == pytest.approx(0.0, abs=step0_kl_bound(first))
    assert first["kl_k3"] == pytest.approx(0.0, abs=1e-6)
    assert first["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert first["first_approx_kl"] == pytest.approx(0.0, abs=1e-8)
    assert first["first_clip_fraction"] == 0.0
    required = ["step", "score_mean", "score_std", "reward_mean", "kl", "kl_k3", "clip_fraction", "approx_kl",
                "entropy", "policy_loss", "value_loss", "value_clip_fraction", "explained_variance",
                "response_length", "eos_rate", "beta", "actor_lr", "time_rollout", "time_judge", "time_update",
                "generation_tokens_per_second", "samples_per_second", "steps_per_minute", "minibatches",
                "early_stopped", "time_reference", "peak_memory_mb"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for key in required:
        assert key in lines[0], key
        assert lines[0][key] == pytest.approx(first[key], nan_ok=True)
    assert lines[0]["entropy"] > 0
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 4 * 2 and {"prompt", "completion", "score"} <= set(samples[0])
    assert any(isinstance(e, ev.CheckpointSaved) for e in events)
    assert (tmp_path / "run" / "config.yaml").exists()


def test_update_moves_adapter_and_reference_stays_base(tiny_dir, prompts_file, tmp_path):
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=1, actor_lr=5e-3)
    trainer, _, metrics, _ = run(cfg)
    lora_b = [v for k, v in tree_flatten(trainer.policy.model.trainable_parameters()) if k.endswith("lora_b")]
    assert lora_b and max(float(mx.abs(b).max().item()) for b in lora_b) > 0  # gradients reached the adapter
    vh = trainer.policy.value_head.linear.weight
    assert float(mx.abs(vh).max().item()) > 0  # and the value head

    base, tok = load_policy(str(tiny_dir))
    ids = [tok.encode("say alpha"), tok.encode("a longer prompt here")]
    roll = sample(base, ids, num_samples=2, max_new_tokens=8, temperature=1.0, eos_ids=[], pad_id=0, seed=3)
    P = roll.prompt_width
    _, base_logits = forward(base, roll.tokens, roll.left_pad, P)
    base_lp, _ = token_logprobs(base_logits, roll.tokens[:, P:], 1.0)
    with adapter_off(trainer.policy) as off:
        _, off_logits = forward(off, roll.tokens, roll.left_pad, P)
    off_lp, _ = token_logprobs(off_logits, roll.tokens[:, P:], 1.0)
    assert mx.allclose(off_lp, base_lp, atol=1e-5).item()  # adapter off == base model
    pol_lp, _, _ = evaluate(trainer.policy, roll.tokens, roll.left_pad, P, 1.0, with_values=False)
    log_ratio = float(mx.abs((pol_lp - base_lp) * roll.response_mask).max().item())
    assert log_ratio > 1e-4  # the trained policy differs from its reference
    # and the adapter is back on after the context manager
    pol_lp2, _, _ = evaluate(trainer.policy, roll.tokens, roll.left_pad, P, 1.0, with_values=False)
    assert mx.allclose(pol_lp, pol_lp2).item()


def test_large_learning_rate_clips(tiny_dir, prompts_file, tmp_path):
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=2, actor_lr=0.05, ppo_epochs=4,
                      minibatch_size=2, max_grad_norm=0.0)
    _, _, metrics, _ = run(cfg)
    assert max(m["clip_fraction"] for m in metrics) > 0.0
    assert all(math.isfinite(m["kl"]) for m in metrics)


def test_resume_equals_uninterrupted(tiny_dir, prompts_file, tmp_path):
    full = make_config(tiny_dir, prompts_file, tmp_path / "full", steps=4, save_every=2)
    t_full, _, m_full, _ = run(full)
    part = make_config(tiny_dir, prompts_file, tmp_path / "part", steps=2, save_every=2)
    run(part)
    resumed = make_config(tiny_dir, prompts_file, tmp_path / "part", steps=4, save_every=2)
    t_res, state, m_res, _ = run(resumed, resume=True)
    assert state.status == "finished" and [m["step"] for m in m_res] == [3, 4]
    for key in ("score_mean", "kl", "policy_loss", "value_loss", "clip_fraction", "response_length"):
        assert m_res[-1][key] == pytest.approx(m_full[-1][key], rel=1e-4, abs=1e-6), key
    a = dict(tree_flatten(t_full.policy.trainable_parameters()))
    b = dict(tree_flatten(t_res.policy.trainable_parameters()))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-6).item(), k


def test_refuses_to_overwrite_a_run_and_resume_needs_checkpoint(tiny_dir, prompts_file, tmp_path):
    from tui_trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="nothing to resume"):
        build_run(make_config(tiny_dir, prompts_file, tmp_path / "empty"), resume=True).run()
    run(make_config(tiny_dir, prompts_file, tmp_path / "run", steps=1))
    with pytest.raises(TrainerError, match="already holds a run"):
        build_run(make_config(tiny_dir, prompts_file, tmp_path / "run", steps=1)).run()


def test_checkpoint_loads_in_mlx_lm(tiny_dir, prompts_file, tmp_path):
    from mlx_lm.tuner.utils import load_adapters

    trainer, _, _, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "run", steps=1, actor_lr=5e-3))
    ckpt = tmp_path / "run" / "checkpoints" / "000001"
    assert {"adapters.safetensors", "adapter_config.json", "value_head.safetensors", "optimizer.safetensors",
            "state.json"} <= {p.name for p in ckpt.iterdir()}
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    saved = json.loads((ckpt / "adapter_config.json").read_text())
    # the base is named (absolute) for mlx_lm --adapter-path and fingerprinted for export
    assert saved["model"] == str(tiny_dir.resolve()) and saved["tui_trainer"]["base"]["size"] > 0
    model, tok = load_policy(str(tiny_dir))
    load_adapters(model, str(ckpt))
    ids = [tok.encode("say beta")]
    roll = sample(model, ids, max_new_tokens=6, temperature=0, eos_ids=[], pad_id=0)
    P = roll.prompt_width
    _, logits = forward(model, roll.tokens, roll.left_pad, P)
    lp_loaded, _ = token_logprobs(logits, roll.tokens[:, P:], 1.0)
    lp_policy, _, _ = evaluate(trainer.policy, roll.tokens, roll.left_pad, P, 1.0, with_values=False)
    assert mx.allclose(lp_loaded, lp_policy, atol=1e-5).item()


def test_batched_logprobs_equal_unbatched_and_trim_is_exact(tiny_dir):
    model, tok = load_policy(str(tiny_dir))
    policy = Policy(model, AdapterConfig(rank=4))
    ids = [tok.encode("a"), tok.encode("a much longer prompt than the first"), tok.encode("mid size")]
    roll = sample(model, ids, num_samples=1, max_new_tokens=7, temperature=0.9, eos_ids=[], pad_id=0, seed=0)
    P = roll.prompt_width
    batched, _, _ = evaluate(policy, roll.tokens, roll.left_pad, P, 0.9, with_values=False)
    assert mx.allclose(batched * roll.response_mask, roll.logprobs, atol=1e-5).item()  # == rollout's
    for i, p in enumerate(ids):
        alone = mx.array([p + roll.responses[i]])
        lp, _, _ = evaluate(policy, alone, mx.array([0]), len(p), 0.9, with_values=False)
        n = roll.lengths[i]
        assert mx.allclose(lp[0, :n], batched[i, :n], atol=1e-5).item()
    tok_t, lp_t, p_w, r_w = trim_rows(roll, [0, 2])  # the two short prompts share left padding
    assert p_w < P
    trimmed, _, _ = evaluate(policy, tok_t, lp_t, p_w, 0.9, with_values=False)
    assert mx.allclose(trimmed, batched[mx.array([0, 2]), :r_w], atol=1e-5).item()


def test_a_fused_adapter_samples_what_the_adapter_does_and_is_put_back(tiny_dir, monkeypatch):
    """adapter_fused (the rollout's model): with a non-zero adapter, the same greedy tokens and
    log-probs (float32 rounding) as the LoRA layers; the LoRA layers and their weights come back."""
    from mlx_lm.tuner.lora import LoRALinear

    model, tok = load_policy(str(tiny_dir))
    policy = Policy(model, AdapterConfig(rank=4))
    for i, (_, m) in enumerate(n for n in model.named_modules() if isinstance(n[1], LoRALinear)):
        m.lora_b = mx.random.normal(m.lora_b.shape, key=mx.random.key(i)) * 0.05
    before = dict(tree_flatten(policy.trainable_parameters()))
    ids = [tok.encode("a"), tok.encode("a much longer prompt than the first")]
    plain = sample(model, ids, num_samples=1, max_new_tokens=6, temperature=0.0, eos_ids=[], pad_id=0)
    with adapter_fused(policy) as fused:
        assert not any(isinstance(m, LoRALinear) for _, m in fused.named_modules())
        got = sample(fused, ids, num_samples=1, max_new_tokens=6, temperature=0.0, eos_ids=[], pad_id=0)
    with adapter_off(policy) as base:
        off = sample(base, ids, num_samples=1, max_new_tokens=6, temperature=0.0, eos_ids=[], pad_id=0)
    assert got.tokens.tolist() == plain.tokens.tolist() != off.tokens.tolist()  # the adapter matters here
    assert mx.allclose(got.logprobs, plain.logprobs, atol=1e-4).item()
    after = dict(tree_flatten(policy.trainable_parameters()))
    assert after.keys() == before.keys() and all(mx.array_equal(after[k], before[k]).item() for k in before)
    assert sum(isinstance(m, LoRALinear) for _, m in model.named_modules()) == len(
        [k for k in before if k.endswith("lora_a")])
    import tui_trainer.engine.policy as policy_module

    assert policy_module.fused_budget() > 0
    monkeypatch.setattr(policy_module, "fused_budget", lambda: 0)  # no memory to spare: not folded
    with adapter_fused(policy) as same:
        assert sum(isinstance(m, LoRALinear) for _, m in same.named_modules()) == len(
            [k for k in before if k.endswith("lora_a")])
    monkeypatch.undo()
    model.set_dtype(mx.bfloat16)  # a 16-bit base is not folded: its rounding would move the log-probs
    with adapter_fused(policy) as same:
        assert sum(isinstance(m, LoRALinear) for _, m in same.named_modules()) == len(
            [k for k in before if k.endswith("lora_a")])


@pytest.mark.parametrize("mode,objective", [("rloo", "ppo"), ("grpo", "ppo"), ("pairwise", "ppo"),
                                            ("pairwise", "studio")])
def test_other_modes_train(tiny_dir, prompts_file, tmp_path, mode, objective):
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=2, mode=mode, pairwise_objective=objective,
                      actor_lr=5e-3)
    if mode == "pairwise":
        cfg.judges = [JudgeSpec("rules", 1.0, {"callable": "test_trainer:char_length"})]
    trainer, state, metrics, _ = run(cfg)
    assert state.status == "finished"
    lora_b = [v for k, v in tree_flatten(trainer.policy.model.trainable_parameters()) if k.endswith("lora_b")]
    assert max(float(mx.abs(b).max().item()) for b in lora_b) > 0
    assert metrics[0]["first_ratio"] == pytest.approx(1.0, abs=1e-5)


def test_frozen_prefix_cache_is_exact(tiny_dir, prompts_file, tmp_path, monkeypatch):
    """LoRA on the last block only: the first block runs once per step; results must not change."""
    import tui_trainer.engine.policy as policy_mod

    t_fast, _, m_fast, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "fast", steps=2))
    assert t_fast.policy.prefix_layers == 1
    monkeypatch.setattr(policy_mod, "frozen_prefix_layers", lambda *a: 0)
    t_slow, _, m_slow, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "slow", steps=2))
    assert t_slow.policy.prefix_layers == 0
    for key in ("kl", "policy_loss", "value_loss", "clip_fraction", "approx_kl", "score_mean"):
        assert m_fast[-1][key] == pytest.approx(m_slow[-1][key], rel=1e-4, abs=1e-6), key


def test_kl_estimator_names_the_reported_kl(tiny_dir, prompts_file, tmp_path):
    judges = [JudgeSpec("rules", 1.0, {"callable": "test_trainer:char_length"})]  # varies from step 1
    _, _, m1, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "k1", steps=2, actor_lr=5e-3, judges=judges))
    _, _, m3, _ = run(make_config(tiny_dir, prompts_file, tmp_path / "k3", steps=2, actor_lr=5e-3,
                                  kl_estimator="k3", judges=judges))
    assert m1[-1]["kl"] == pytest.approx(m1[-1]["kl_k1"]) and m1[-1]["kl"] != pytest.approx(m1[-1]["kl_k3"])
    assert m3[-1]["kl"] == pytest.approx(m3[-1]["kl_k3"]) and m3[-1]["kl"] != pytest.approx(m3[-1]["kl_k1"])
    assert m3[-1]["kl_k3"] > 0


def zero(prompt: str, completion: str) -> float:
    return 0.0


def test_no_signal_no_update(tiny_dir, prompts_file, tmp_path):
    """Zero scores and a policy equal to its reference (step 1: KL 0) give zero rewards and zero
    advantages; whitening must not blow float noise up into an update, so the adapter stays put."""
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "run", steps=1, actor_lr=5e-3,
                      judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer:zero"})])
    trainer, _, metrics, _ = run(cfg)
    lora_b = [v for k, v in tree_flatten(trainer.policy.model.trainable_parameters()) if k.endswith("lora_b")]
    assert max(float(mx.abs(b).max().item()) for b in lora_b) == 0.0
    assert metrics[0]["policy_loss"] == 0.0


def test_evaluation_set_is_fixed_and_leaves_training_alone(tiny_dir, prompts_file, tmp_path):
    """eval_every: the policy scored on the first eval_prompts prompts with the same draw each time;
    training with it equals training without it (its randomness is reseeded every step)."""
    plain = make_config(tiny_dir, prompts_file, tmp_path / "plain", steps=3)
    t_plain, _, m_plain, _ = run(plain)
    evald = make_config(tiny_dir, prompts_file, tmp_path / "eval", steps=3, eval_every=2, eval_prompts=5,
                        judges=[JudgeSpec("rules", 1.0, {"callable": "test_trainer:seen_length"})])
    t_eval, state, m_eval, events = run(evald)
    assert state.status == "finished"
    assert ["eval_score" in m for m in m_eval] == [False, True, False]
    for a, b in zip(m_plain, m_eval):  # the same training, step by step
        for key in ("score_mean", "kl", "policy_loss", "clip_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    a = dict(tree_flatten(t_plain.policy.trainable_parameters()))
    b = dict(tree_flatten(t_eval.policy.trainable_parameters()))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    phases = {e.phase for e in events if isinstance(e, ev.Progress) and e.step == 2}
    assert "evaluation" in phases
    # the set: the first 5 prompts in file order, one sample each; two evaluations of one policy agree
    SEEN.clear()
    first = t_eval.evaluate(3)
    assert SEEN == [f"say {w} {i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta", "kappa"])]
    assert t_eval.evaluate(3) == first and math.isfinite(first)


def test_evaluation_refuses_a_judge_that_asks_a_person(tiny_dir, prompts_file, tmp_path):
    cfg = make_config(tiny_dir, prompts_file, tmp_path / "human", eval_every=1,
                      judges=[JudgeSpec("human", 1.0, {})])
    with pytest.raises(ConfigError, match="eval_every: judge human asks a person"):
        run(cfg, prompter=lambda *a, **k: None)
