"""The RLHF pipeline end to end on a tiny random model: `reward train` learns a rule from
preference pairs, then PPO with that reward model as its only judge raises the rule's score.
PPO never sees the rule; it is held out and only used here to measure the policy."""

from __future__ import annotations

import json
import random

from helpers import make_tiny_model_dir
from tui_trainer import events as ev
from tui_trainer.config import AdapterConfig, Config, DataConfig, JudgeSpec, RewardTrainConfig
from tui_trainer.engine.reward_train import train_reward_model
from tui_trainer.preferences import Pair, user_prompt

ALPHABET = "aeinrstu: \n"
PROMPTS = ["sun", "tea", "rat", "nut"]


def rule(text: str) -> float:
    """The held-out rule: the more letters 'a', the better."""
    return float(text.count("a"))


def rule_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Random words from the model's alphabet; chosen = the one with more letters 'a' (no ties)."""
    rng = random.Random(seed)
    letters = ALPHABET.replace(":", "").replace("\n", "")
    out: list[Pair] = []
    while len(out) < n:
        a, b = ("".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(2))
        if rule(a) != rule(b):
            chosen, rejected = (a, b) if rule(a) > rule(b) else (b, a)
            out.append(Pair(user_prompt(f"say {rng.choice(PROMPTS)}"), chosen, rejected))
    return out


def test_ppo_with_a_trained_reward_model_raises_the_held_out_rule(tmp_path):
    """About a minute on 2 idle CPU cores: the reward model ranks held-out pairs by the rule
    (accuracy 0.97 with this seed, asserted >= 0.9), and 30 PPO steps scored by it alone raise the
    rule's score per completion (2.27 letters 'a' over the first 10 steps -> 3.61 over the last 10;
    asserted: by more than 0.6)."""
    from tui_trainer.run import build_run

    tiny = make_tiny_model_dir(tmp_path / "tiny", alphabet=ALPHABET, tie_word_embeddings=False)
    rm_dir = tmp_path / "reward"
    rm_cfg = RewardTrainConfig(model=str(tiny), adapter_type="full", layers=-1, epochs=4, batch_size=16,
                               learning_rate=3e-3, eval_fraction=0.2, seed=0)
    summary = train_reward_model(rm_cfg, rule_pairs(320), rm_dir)
    accuracy = summary["final"]["eval_accuracy"]
    print(f"reward model held-out accuracy {accuracy:.3f} on {summary['eval_pairs']} pairs")
    assert accuracy >= 0.9

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n" for w in PROMPTS))
    steps = 30
    cfg = Config(model=str(tiny), run_dir=str(tmp_path / "run"), data=DataConfig(path=str(prompts)), steps=steps,
                 batch_size=2, num_samples=4, max_new_tokens=8, minibatch_size=8, ppo_epochs=2, save_every=0,
                 actor_lr=1e-2, adapter=AdapterConfig(rank=4, layers=2),
                 judges=[JudgeSpec("reward", 1.0, {"path": str(rm_dir)})])
    events: list = []
    build_run(cfg, observer=events.append).run()
    samples = [[s for s in batch if isinstance(s, ev.Sample)] for batch in events if isinstance(batch, list)]
    samples = [b for b in samples if b]
    assert len(samples) == steps and all(set(s.scores) == {"reward"} for b in samples for s in b)

    def rule_score(batches):
        return sum(rule(s.completion) for b in batches for s in b) / sum(len(b) for b in batches)

    early, late = rule_score(samples[:10]), rule_score(samples[-10:])
    print(f"held-out rule: first 10 steps {early:.2f}, last 10 steps {late:.2f}")
    assert late > early + 0.6
