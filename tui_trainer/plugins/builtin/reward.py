"""The ``reward`` judge: scores with a reward model written by ``tui-trainer reward train``.

Pointwise: ``score = r(prompt, completion)``, the reward model's scalar for the conversation
``[user: prompt, assistant: completion]``, normalised by default with the mean / std of the
rewards over its training completions (``normalise: false`` gives the raw reward). Pairwise:
P(a > b) = sigma(r_a - r_b) (Bradley-Terry); the verdict is the likelier one with that
probability as its confidence, a tie when the rewards are equal.

Building the judge only checks the directory. In a run whose policy has a LoRA / DoRA adapter on
the base the reward model was trained on, the trainer hands the judge its policy
(``share_policy``) and the reward adapter is switched in on the policy's own weights for scoring
(``engine.reward.SharedBaseReward``: no second copy of the base; ``share_base: false`` turns this
off); the judge is then called on the engine thread, like the policy itself. Otherwise the
reward model loads its own copy of its base when it first scores.
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
    Option("share_base", bool, True, "in a run on the same base with a LoRA policy: score on the policy's weights "
                                     "with the reward adapter switched in (no second copy of the base)"),
    Option("batch_size", int, 8, "completions scored per forward pass"),
]


class RewardJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        from tui_trainer.engine.reward import read_reward_config

        self.name = context.name
        self.log = context.log
        if not options.get("path"):
            raise ConfigError(f"judge {self.name}: option 'path' is required (a directory written by "
                              "`tui-trainer reward train`)")
        if options["batch_size"] < 1:
            raise ConfigError(f"judge {self.name}: batch_size must be >= 1, got {options['batch_size']}")
        self.path, self.model, self.batch_size = options["path"], options.get("model"), options["batch_size"]
        self.normalise = bool(options["normalise"])
        self.share_base = bool(options["share_base"])
        self.config = read_reward_config(self.path)  # a bad directory fails now, before any model loads
        self._scorer = None

    @property
    def scorer(self):
        """The RewardScorer; loads the reward model on its own base the first time if no policy was shared."""
        if self._scorer is None:
            from tui_trainer.engine.reward import RewardScorer

            self._scorer = RewardScorer.load(self.path, self.model, batch_size=self.batch_size)
            self.log(f"judge {self.name}: reward model {self.path} loaded on its own copy of its base")
        return self._scorer

    def share_policy(self, policy: Any, tokenizer: Any) -> bool:
        """Called once the run's policy is built. Score on its base with the reward adapter switched
        in when it is the same base and the policy trains an adapter (so its base weights never
        change); True when it does. Otherwise the reward model loads its own copy now, so a base
        that cannot be loaded stops the run at start-up, not at its first score."""
        shared = self._share(policy, tokenizer)
        if not shared:
            self.scorer  # noqa: B018  (loads it)
        return shared

    def _share(self, policy: Any, tokenizer: Any) -> bool:
        from tui_trainer.engine.reward import SharedBaseReward, base_signature, same_base
        from tui_trainer.errors import ModelError

        if not self.share_base or self._scorer is not None or self.model is not None:
            return False
        if getattr(policy, "adapter_type", None) not in ("lora", "dora"):
            return False
        if self.config.get("adapter_type") not in ("lora", "dora"):
            return False
        if same_base(self.config.get("base_signature") or {}, base_signature(policy.model)) is not None:
            return False
        try:
            self._scorer = SharedBaseReward(policy.model, self.path).scorer(tokenizer, self.batch_size)
        except ModelError as exc:
            self.log(f"judge {self.name}: cannot share the policy's base ({exc}); loading its own copy")
            return False
        self.log(f"judge {self.name}: reward adapter {self.path} switched in on the policy's base (no second copy)")
        return True

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
