"""The ``reward`` judge: scores with a reward model written by ``tui-trainer reward train``.

Pointwise: ``score = r(prompt, completion)``, the reward model's scalar for the conversation
``[user: prompt, assistant: completion]``, normalised by default with the mean / std of the
rewards over its training completions (``normalise: false`` gives the raw reward). Pairwise:
P(a > b) = sigma(r_a - r_b) (Bradley-Terry); the verdict is the likelier one with that
probability as its confidence, a tie when the rewards are equal.

The model is loaded once, when the judge is built (the base recorded in the directory, or
``model``, which must be that same base). Scoring runs MLX on the judge's call; the engine
thread waits for it, so MLX is never driven from two threads at once.
"""

from __future__ import annotations

from typing import Any

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import JudgeContext, Verdict

OPTIONS = [
    Option("path", str, None, "reward-model directory written by `tui-trainer reward train` (required)"),
    Option("normalise", bool, True, "score (r - mean) / std with the training set's statistics; false = raw reward",
           aliases=("normalize",)),
    Option("model", str, None, "base model to load the reward model on; null = the one recorded in the directory"),
    Option("batch_size", int, 8, "completions scored per forward pass"),
]


class RewardJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        from tui_trainer.engine.reward import RewardScorer

        self.name = context.name
        if not options.get("path"):
            raise ConfigError(f"judge {self.name}: option 'path' is required (a directory written by "
                              "`tui-trainer reward train`)")
        if options["batch_size"] < 1:
            raise ConfigError(f"judge {self.name}: batch_size must be >= 1, got {options['batch_size']}")
        self.normalise = bool(options["normalise"])
        self.scorer = RewardScorer.load(options["path"], options.get("model"), batch_size=options["batch_size"])
        context.log(f"judge {self.name}: reward model {options['path']} loaded")

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.scorer.rewards(prompts, completions, normalised=self.normalise)

    def probability(self, prompt: str, a: str, b: str) -> float:
        """P(a > b) = sigma(r_a - r_b)."""
        from tui_trainer.engine.reward import preference_probability

        r_a, r_b = self.scorer.rewards([prompt, prompt], [a, b])
        return preference_probability(r_a, r_b)

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        p = self.probability(prompt, a, b)
        if p == 0.5:
            return Verdict("tie", 0.5)
        return Verdict("a", p) if p > 0.5 else Verdict("b", 1.0 - p)
