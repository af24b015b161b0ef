"""Reward models on a tiny random llama: the Bradley-Terry formulas, exact batched rewards
(parity with mlx-lm's own forward of each row alone), a training run that learns a rule, the
directory (mlx-lm loads its adapter; a different base is refused) and the ``reward`` judge."""

from __future__ import annotations

import json
import math
import random

import mlx.core as mx
from mlx.utils import tree_map
import numpy as np
import pytest

from tui_trainer.config import AdapterConfig, RewardTrainConfig
from tui_trainer.engine import reward as R
from tui_trainer.engine.models import load_policy
from tui_trainer.engine.reward_train import split_pairs, train_reward_model
from tui_trainer.errors import ModelError
from tui_trainer.plugins.manager import build_judge_set
from tui_trainer.preferences import Pair, user_prompt

from helpers import make_tiny_model_dir

F32 = 2.0 ** -23


def test_bradley_terry_formulas():
    rc, rr = mx.array([2.0, 0.0, -1.0, 30.0]), mx.array([0.0, 0.0, 1.0, -30.0])
    d = np.array([2.0, 0.0, -2.0, 60.0])
    expected = np.log1p(np.exp(-d))  # -log sigma(d)
    assert np.allclose(np.array(R.bradley_terry_loss(rc, rr)), expected, rtol=1e-6, atol=1e-7)
    # the margin shifts the difference: -log sigma(d - m)
    assert np.allclose(np.array(R.bradley_terry_loss(rc, rr, 1.0)), np.log1p(np.exp(-(d - 1.0))), rtol=1e-6)
    # stable far out: -log sigma(-100) = 100 (a naive log(sigmoid) gives inf)
    assert R.bradley_terry_loss(mx.array([0.0]), mx.array([100.0])).item() == pytest.approx(100.0, rel=1e-6)
    assert np.allclose(np.array(R.centering_term(rc, rr)), [4.0, 0.0, 0.0, 0.0])
    total = R.reward_loss(rc, rr, margin=0.5, center_coef=0.01).item()
    assert total == pytest.approx(np.log1p(np.exp(-(d - 0.5))).mean() + 0.01 * 1.0, rel=1e-6)
    assert R.pair_accuracy(rc, rr).item() == 0.5  # 2 > 0 and 30 > -30; the tie counts as wrong
    assert R.mean_margin(rc, rr).item() == pytest.approx(15.0)
    assert R.preference_probability(1.0, 0.0) == pytest.approx(1 / (1 + math.e ** -1))
    assert R.preference_probability(-800.0, 0.0) == pytest.approx(0.0, abs=1e-300)
    assert R.normalise(3.0, 1.0, 2.0) == 1.0


def test_split_is_seeded_and_keeps_one_of_each():
    train, held = split_pairs(10, 0.2, seed=1)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert split_pairs(10, 0.2, seed=1) == (train, held) and split_pairs(10, 0.2, seed=2) != (train, held)
    assert split_pairs(3, 0.01, 0)[1] != [] and split_pairs(2, 0.9, 0)[0] != []
    assert split_pairs(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])


def test_batched_rewards_equal_mlx_lm_forward_of_each_row(tiny_dir):
    """The reward is the head on mlx-lm's own last hidden state of the last real token, for every
    row of a left-padded batch (parity against the model run on the row alone)."""
    model, tok = load_policy(str(tiny_dir))
    mx.random.seed(0)
    rm = R.RewardModel(model, AdapterConfig(type="lora", layers=-1))
    # a non-zero adapter, so the adapted layers take part
    rm.model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape),
                                      rm.model.trainable_parameters()))
    rows = [R.encode(tok, [{"role": "user", "content": p}], c)
            for p, c in [("hi", "hello there"), ("a much longer prompt here", "ok"), ("x", "y")]]
    assert len({len(r) for r in rows}) == 3  # three lengths: two rows are left-padded
    batched = R.rewards_of(rm, rows, batch_size=3, pad_id=0)
    for row, value in zip(rows, batched):
        h = rm.model.model(mx.array([row]))[0, -1]  # mlx-lm's backbone alone
        alone = (h @ rm.head.linear.weight.T + rm.head.linear.bias).item()
        assert abs(value - alone) <= 64 * F32 * max(1.0, abs(alone))
    # the conversation goes through the chat template, the reply last
    text = tok.decode(rows[0])
    assert text.endswith("assistant: hello there\n") and "user: hi" in text


def keyword_pairs(n: int, seed: int = 0) -> list[Pair]:
    """chosen = the completion holding the keyword "yes"; the rest of both is random words."""
    rng = random.Random(seed)
    words = ["cat", "dog", "sun", "tree", "car", "book", "rain", "milk"]
    out = []
    for _ in range(n):
        a, b = (" ".join(rng.choice(words) for _ in range(3)) for _ in range(2))
        out.append(Pair(user_prompt(f"say {rng.choice(words)}"), f"{a} yes", f"{b} no"))
    return out


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "reward"
    events = []
    cfg = RewardTrainConfig(model=str(tiny_dir), epochs=3, batch_size=8, learning_rate=3e-4, eval_fraction=0.25,
                            layers=1, eval_every=2, seed=0)  # block 0 frozen: the cached path
    summary = train_reward_model(cfg, keyword_pairs(48), out, observer=events.append)
    return out, summary, events


def test_training_learns_the_rule(trained):
    out, summary, events = trained
    history = summary["history"]
    assert summary["train_pairs"] == 36 and summary["eval_pairs"] == 12
    assert history[0]["step"] == 0 and "loss" not in history[0]  # the untrained model, held out
    assert history[-1]["loss"] < 0.5 * history[1]["loss"]
    assert history[-1]["eval_loss"] < 0.5 * history[0]["eval_loss"]
    assert summary["final"]["eval_accuracy"] >= 0.9 and summary["final"]["eval_margin"] > 1.0
    # reported every eval_every steps and at each epoch's end, with progress in between
    from tui_trainer import events as ev

    reported = [e.step for e in events if isinstance(e, ev.StepMetrics)]
    assert reported == [h["step"] for h in history] and reported[:3] == [0, 2, 4]
    assert reported[-1] == summary["steps"]
    steps = [e.done for e in events if isinstance(e, ev.Progress) and e.phase == "reward"]
    assert steps[:3] == [1, 2, 3] and max(steps) == summary["steps"]


def test_directory_reloads_exactly(trained, tiny_dir):
    """Scores from the written directory equal the trained model's; the stored statistics are the
    mean / std of the rewards of the training completions; mlx-lm loads the adapter as its own."""
    out, summary, _ = trained
    cfg = json.loads((out / R.REWARD_CONFIG).read_text())
    adapter_cfg = json.loads((out / R.ADAPTER_CONFIG).read_text())
    assert adapter_cfg["fine_tune_type"] == "lora" and adapter_cfg["model"] == str(tiny_dir.resolve())
    assert cfg["base_model"] == str(tiny_dir.resolve()) and cfg["chat_template"] is True
    scorer = R.RewardScorer.load(out)
    pairs = keyword_pairs(48)
    train_idx, eval_idx = split_pairs(48, 0.25, 0)
    completions = [pairs[i].chosen for i in train_idx] + [pairs[i].rejected for i in train_idx]
    prompts = [pairs[i].prompt_text for i in train_idx] * 2
    raw = np.array(scorer.rewards(prompts, completions))
    stats = cfg["score_stats"]
    assert stats["count"] == 72
    assert stats["mean"] == pytest.approx(raw.mean(), abs=1e-4) and stats["std"] == pytest.approx(raw.std(ddof=1), rel=1e-4)
    normed = np.array(scorer.rewards(prompts, completions, normalised=True))
    assert np.allclose(normed, (raw - stats["mean"]) / stats["std"], atol=1e-5)
    # held-out accuracy from the reloaded model equals what training reported
    rc = scorer.rewards([pairs[i].prompt_text for i in eval_idx], [pairs[i].chosen for i in eval_idx])
    rr = scorer.rewards([pairs[i].prompt_text for i in eval_idx], [pairs[i].rejected for i in eval_idx])
    assert np.mean(np.array(rc) > np.array(rr)) == summary["final"]["eval_accuracy"]
    assert np.mean(np.array(rc) - np.array(rr)) == pytest.approx(summary["final"]["eval_margin"], rel=1e-4)
    # mlx-lm reads adapters.safetensors + adapter_config.json: same hidden states as ours
    from mlx_lm import load

    lm, tok = load(str(tiny_dir), adapter_path=str(out))
    ids = scorer.ids("say cat", "dog yes")
    ours = scorer.rm.model.model(mx.array([ids]))[0, -1]
    theirs = lm.model(mx.array([ids]))[0, -1]
    assert mx.abs(ours - theirs).max().item() <= 1e-5


def test_a_different_base_is_refused(trained, tmp_path):
    out, _, _ = trained
    other = make_tiny_model_dir(tmp_path / "other", seed=5)
    with pytest.raises(ModelError) as err:
        R.RewardScorer.load(out, model=str(other))
    assert "is a different model" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="not a reward-model directory"):
        R.read_reward_config(tmp_path / "other")
    with pytest.raises(ModelError, match="not a reward model"):
        R.check_output_dir(tmp_path / "other")


def test_reward_judge_pointwise_and_pairwise(trained):
    out, _, _ = trained
    judges = build_judge_set([{"name": "reward", "options": {"path": str(out), "normalise": False}},
                              {"name": "reward", "options": {"path": str(out)}}])
    raw_judge, norm_judge = (m.judge for m in judges.members)
    prompts, completions = ["say cat", "say cat"], ["tree book yes", "tree book no"]
    raw = raw_judge.score(prompts, completions)
    assert raw[0] > raw[1]
    stats = json.loads((out / R.REWARD_CONFIG).read_text())["score_stats"]
    assert norm_judge.score(prompts, completions) == pytest.approx(
        [(r - stats["mean"]) / stats["std"] for r in raw], rel=1e-5)
    verdict = raw_judge.compare("say cat", "tree book no", "tree book yes")
    assert verdict.choice == "b"
    assert verdict.confidence == pytest.approx(1 / (1 + math.exp(-(raw[0] - raw[1]))), rel=1e-5)
    # through the judge set, as a run calls it
    result = judges.score(prompts, completions)
    assert result.per_judge["reward"] == pytest.approx(raw, rel=1e-6)
    from tui_trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="'path' is required"):
        build_judge_set([{"name": "reward"}])


def test_frozen_prefix_path_equals_the_full_forward(tiny_dir):
    """With the adapter on the last block only, training runs the first block once per input
    (prefix_states) and the adapted block per step (from_prefix): the same rewards as the full
    left-padded forward."""
    model, tok = load_policy(str(tiny_dir))
    rm = R.RewardModel(model, AdapterConfig(type="lora", layers=1))
    assert rm.prefix_layers == 1
    rm.model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), rm.model.trainable_parameters()))
    rows = [R.encode(tok, [{"role": "user", "content": p}], c) for p, c in [("hi", "hello"), ("longer one", "x y z")]]
    tokens, left_pad = R.pad_left(rows)
    full = rm(tokens, left_pad)
    cached = rm.from_prefix(rm.prefix_states(rows, batch_size=1))
    assert mx.abs(full - cached).max().item() <= 64 * F32 * max(1.0, mx.abs(full).max().item())


@pytest.mark.parametrize("share", [True, False])
def test_ppo_run_with_the_reward_judge(trained, tiny_dir, tmp_path, share):
    """A PPO step on the tiny policy scored by the reward judge alone (from a run config): each
    sample's score is the reward model's normalised score of (prompt, completion), whether the
    reward adapter is switched in on the policy's own base (the default: same base, LoRA policy)
    or the reward model has its own copy (share_base: false)."""
    from tui_trainer import events as ev
    from tui_trainer.config import Config, DataConfig, JudgeSpec
    from tui_trainer.run import build_run

    out, _, _ = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in ["cat", "dog", "sun", "tree"]))
    cfg = Config(model=str(tiny_dir), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(prompts)), steps=2,
                 batch_size=2, num_samples=2, max_new_tokens=6, minibatch_size=4, ppo_epochs=1, save_every=0,
                 actor_lr=1e-2, adapter=AdapterConfig(rank=4, layers=2),
                 judges=[JudgeSpec("reward", 1.0, {"path": str(out), "share_base": share})])
    events: list = []
    trainer = build_run(cfg, observer=events.append)
    trainer.run()
    judge = trainer.judges.members[0].judge
    assert isinstance(judge.scorer.rm, R.SharedBaseReward if share else R.RewardModel)
    assert trainer.judges.members[0].interactive is share  # on the policy's weights: the engine thread
    logs = " ".join(e.message for e in events if isinstance(e, ev.LogMessage))
    assert ("switched in on the policy's base" in logs) is share
    samples = [e for batch in events if isinstance(batch, list) for e in batch if isinstance(e, ev.Sample)]
    metrics = [e.values for e in events if isinstance(e, ev.StepMetrics)]
    assert len(samples) == 8 and len(metrics) == 2 and math.isfinite(metrics[1]["score/reward"])
    # step 2 ran after an update moved the policy's adapter: the scores are still the reward model's
    from mlx.utils import tree_flatten

    lora_b = [v for k, v in tree_flatten(trainer.policy.model.trainable_parameters()) if k.endswith("lora_b")]
    assert max(mx.abs(v).max().item() for v in lora_b) > 0
    scorer = R.RewardScorer.load(out)
    expected = scorer.rewards([s.prompt for s in samples], [s.completion for s in samples], normalised=True)
    assert [s.scores["reward"] for s in samples] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_full_fine_tuning_and_plain_text(tiny_dir, tmp_path):
    """adapter_type full writes every weight (model.safetensors) and reloads to the same scores;
    chat_template false scores the plain text "prompt\\n\\ncompletion"."""
    cfg = RewardTrainConfig(model=str(tiny_dir), adapter_type="full", epochs=1, batch_size=8, learning_rate=1e-4,
                            eval_fraction=0.25, chat_template=False)
    summary = train_reward_model(cfg, keyword_pairs(16), tmp_path / "full")
    assert (tmp_path / "full" / R.WEIGHTS_FILE).is_file() and not (tmp_path / "full" / R.ADAPTER_FILE).exists()
    scorer = R.RewardScorer.load(tmp_path / "full")
    _, held = split_pairs(16, 0.25, 0)
    pairs = keyword_pairs(16)
    rc = scorer.rewards([pairs[i].prompt_text for i in held], [pairs[i].chosen for i in held])
    rr = scorer.rewards([pairs[i].prompt_text for i in held], [pairs[i].rejected for i in held])
    assert np.mean(np.array(rc) - np.array(rr)) == pytest.approx(summary["final"]["eval_margin"], rel=1e-4)
    assert scorer.ids("say cat", "dog yes") == scorer.tokenizer.encode("say cat\n\ndog yes")


def test_reward_adapter_switched_in_on_the_policy_base(trained, tiny_dir):
    """A LoRA reward model on the policy's own base: the same scores as the reward model loaded
    on its own copy, no base layer copied (the reward's adapter layers wrap the very base layers
    the policy's wrap), and the policy's forward unchanged after scoring."""
    from tui_trainer.engine.policy import Policy

    out, _, _ = trained
    model, tok = load_policy(str(tiny_dir))
    policy = Policy(model, AdapterConfig(rank=4, layers=2))
    policy.model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), policy.model.trainable_parameters()))
    prompts, completions = ["say cat", "say a longer thing", "say dog"], ["tree yes", "book car no", "milk"]
    probe = mx.array([R.encode(tok, [{"role": "user", "content": "hi"}], "there")])
    logits_before = policy.model(probe)
    shared = R.SharedBaseReward(policy.model, out)
    scores = shared.scorer(tok).rewards(prompts, completions, normalised=True)
    alone = R.RewardScorer.load(out).rewards(prompts, completions, normalised=True)
    assert scores == pytest.approx(alone, rel=1e-5, abs=1e-5)
    # no second copy: every reward adapter layer wraps the policy's own base layer
    policy_layers = dict(policy.model.named_modules())
    for name, layer in shared.reward_layers:
        assert layer.linear is policy_layers[name].linear
    assert mx.abs(policy.model(probe) - logits_before).max().item() == 0.0
    # a reward model trained on another base is refused
    other, _ = load_policy(str(make_tiny_model_dir(tiny_dir.parent / "other_base", seed=9)))
    with pytest.raises(ModelError, match="not on the policy's base"):
        R.SharedBaseReward(Policy(other, AdapterConfig(rank=4, layers=1)).model, out)


class _Stop(Exception):
    pass


def test_resume_equals_uninterrupted(tiny_dir, tmp_path):
    """A run interrupted at step 5 (checkpoint at step 4, save_every 2) and resumed ends with the
    same weights, history and statistics as the run that was never interrupted."""
    from tui_trainer import events as ev
    from tui_trainer.engine.reward_train import checkpoint_dir
    from tui_trainer.errors import TrainerError

    pairs = keyword_pairs(24)
    cfg = RewardTrainConfig(model=str(tiny_dir), epochs=2, batch_size=4, learning_rate=3e-4, eval_fraction=0.25,
                            layers=1, save_every=2, eval_every=3)
    whole = train_reward_model(cfg, pairs, tmp_path / "whole")

    def stop_at_5(event):
        if isinstance(event, ev.Progress) and event.phase == "reward" and event.done == 5:
            raise _Stop

    with pytest.raises(_Stop):
        train_reward_model(cfg, pairs, tmp_path / "cut", observer=stop_at_5)
    assert checkpoint_dir(tmp_path / "cut").is_dir() and not (tmp_path / "cut").exists()
    with pytest.raises(TrainerError, match="--resume"):
        train_reward_model(cfg, pairs, tmp_path / "cut")
    with pytest.raises(TrainerError, match="other pairs or settings"):
        train_reward_model(cfg, pairs[:-1], tmp_path / "cut", resume=True)
    resumed = train_reward_model(cfg, pairs, tmp_path / "cut", resume=True)
    assert not checkpoint_dir(tmp_path / "cut").exists()
    strip = [{k: v for k, v in h.items() if k != "time"} for h in whole["history"]]
    assert [{k: v for k, v in h.items() if k != "time"} for h in resumed["history"]] == strip
    for name in (R.ADAPTER_FILE, R.HEAD_FILE):
        a, b = mx.load(str(tmp_path / "whole" / name)), mx.load(str(tmp_path / "cut" / name))
        assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    stats = [json.loads((tmp_path / d / R.REWARD_CONFIG).read_text())["score_stats"] for d in ("whole", "cut")]
    assert stats[0] == stats[1]
