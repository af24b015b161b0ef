"""A reward model on the embedded SmolLM2-135M learns a rule it can only see in the text.

The synthetic preference set: every completion is six random words; the chosen one holds the
keyword "banana" at a random place, the rejected one a random word there instead. 32 pairs
train the default LoRA reward model on the last 2 blocks (the first 28 run once per input),
16 are held out. Seeded: the same run on every machine of one kind. About a minute on 2 cores.
"""

from __future__ import annotations

import random

import pytest

from tui_trainer.config import RewardTrainConfig
from tui_trainer.engine.reward_train import train_reward_model
from tui_trainer.preferences import Pair, user_prompt

pytestmark = pytest.mark.integration

TOPICS = ["the sea", "a cat", "winter", "coffee", "a city", "music", "trees", "the moon", "bread", "rain"]
WORDS = ["quiet", "bright", "small", "old", "warm", "green", "slow", "happy", "cold", "soft", "tall", "dark",
         "river", "house", "chair", "lamp"]


def keyword_pairs(n: int, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)

    def sentence(extra: str) -> str:
        words = [rng.choice(WORDS) for _ in range(5)]
        words.insert(rng.randrange(6), extra)
        return " ".join(words).capitalize() + "."

    return [Pair(user_prompt(f"Say something about {rng.choice(TOPICS)}."), sentence("banana"),
                 sentence(rng.choice(WORDS))) for _ in range(n)]


def test_embedded_reward_model_learns_the_keyword_rule(tmp_path):
    cfg = RewardTrainConfig(model=None, epochs=2, batch_size=8, learning_rate=3e-4, eval_fraction=1 / 3, layers=2,
                            seed=0)
    summary = train_reward_model(cfg, keyword_pairs(48), tmp_path / "rm")
    before, after = summary["history"][0], summary["final"]
    assert summary["eval_pairs"] == 16 and before["step"] == 0
    assert after["eval_accuracy"] >= 0.9, summary["history"]
    assert after["eval_loss"] < 0.5 * before["eval_loss"] and after["eval_margin"] > before["eval_margin"]
    assert (tmp_path / "rm" / "reward_config.json").is_file()
