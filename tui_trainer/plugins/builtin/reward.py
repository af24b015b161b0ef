"""The ``reward`` judge: scores with a reward model written by ``tui-trainer reward train``, or
with a Hugging Face sequence-classification reward model (``*ForSequenceClassification``, one
score, e.g. Skywork-Reward-V2; engine/hf_reward.py), a directory or a cached hub repo id.

Pointwise: ``score = r(prompt, completion)``, the reward model's scalar for the conversation
``[user: prompt, assistant: completion]``, normalised by default with the mean / std of the
rewards over its training completions (``normalise: false`` gives the raw reward; a Hugging Face
reward model stores no statistics, so its scores are always raw). Pairwise:
P(a > b) = sigma(r_a - r_b) (Bradley-Terry); the verdict is the likelier one with that
probability as its confidence, a tie when the rewards are equal.

Building the judge only checks the directory. In a run whose policy has a LoRA / DoRA adapter on
the base the reward model was trained on, the trainer hands the judge its policy
(``share_policy``) and the reward adapter is switched in on the policy's own weights for scoring
(``engine.reward.SharedBaseReward``: no second copy of the base; ``share_base: false`` turns this
off); the judge is then called on the engine thread, like the policy itself. Otherwise the
reward model loads its own copy of its base when it first scores.

Learning from a person (``learn_from: human``, engine/reward_online.py): no ``path`` to start
from; the judge asks the person, through the run's prompter (the app's judging screen, or the
console headless) exactly as the ``human`` judge does (shown order shuffled, every answer in
labels.jsonl), ``questions`` questions per step, on the pairs of the step's completions where the
reward model is least sure; every ``refit_every`` answers it refits the reward model (written to
``path``, default ``<run dir>/reward_model``) on all answers so far, on the engine thread, and
scores every sample with it. ``metrics()`` gives ``labels``, ``heldout_accuracy`` and
``agreement``, reported as ``<judge>/labels`` etc. each step.
"""

from __future__ import annotations

from typing import Any

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import JudgeContext, Verdict

OPTIONS = [
    Option("path", str, None, "reward-model directory written by `tui-trainer reward train`, or a Hugging Face "
                              "*ForSequenceClassification reward model (directory or cached hub id) (required)"),
    Option("normalise", bool, True, "score (r - mean) / std with the training set's statistics; false = raw reward "
                                    "(a Hugging Face reward model has no statistics: always raw)",
           aliases=("normalize",)),
    Option("model", str, None, "base model to load the reward model on; null = the one recorded in the directory "
                               "(not for a Hugging Face reward model: it has its own backbone)"),
    Option("share_base", bool, True, "in a run on the same base with a LoRA policy: score on the policy's weights "
                                     "with the reward adapter switched in (no second copy of the base; not for a "
                                     "Hugging Face reward model)"),
    Option("batch_size", int, 8, "completions scored per forward pass"),
    Option("learn_from", str, None, "'human': learn the reward model online from a person's answers (path = where "
                                    "it is written, default <run dir>/reward_model)"),
    Option("questions", int, 2, "learn_from: questions asked per step (where the reward model is least sure)"),
    Option("refit_every", int, 4, "learn_from: refit the reward model on all labels every N new labels"),
    Option("epochs", int, 4, "learn_from: epochs of each refit"),
    Option("learning_rate", float, 1e-3, "learn_from: Adam learning rate of each refit"),
    Option("adapter", str, "lora", "learn_from: lora | dora | full (full trains every weight of its own copy)",
           choices=("lora", "dora", "full")),
    Option("chat_template", bool, True, "learn_from: format [prompt, completion] with the chat template "
                                        "(false = plain text)"),
    Option("layers", int, 16, "learn_from: last blocks that get the reward LoRA; -1 = all"),
    Option("eval_fraction", float, 0.2, "learn_from: share of the labels held out at each refit (held-out accuracy)"),
    Option("agreement_window", int, 20, "learn_from: agreement is measured over the last N answered questions"),
]


class RewardJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        from tui_trainer.engine.reward import is_hf, reward_model_info

        self.name = context.name
        self.log = context.log
        self.online = None
        if options.get("learn_from") is not None:
            self._learn_from(options, context)
            return
        if not options.get("path"):
            raise ConfigError(f"judge {self.name}: option 'path' is required (a directory written by "
                              "`tui-trainer reward train`, or a Hugging Face reward model)")
        if options["batch_size"] < 1:
            raise ConfigError(f"judge {self.name}: batch_size must be >= 1, got {options['batch_size']}")
        self.path, self.model, self.batch_size = options["path"], options.get("model"), options["batch_size"]
        self.normalise = bool(options["normalise"])
        self.share_base = bool(options["share_base"])
        self.config = reward_model_info(self.path)  # a bad directory fails now, before any model loads
        self.hf = is_hf(self.config)
        if self.hf and self.model is not None:
            raise ConfigError(f"judge {self.name}: option 'model' does not apply to a Hugging Face reward model "
                              f"({self.path}): it has its own backbone")
        self._scorer = None

    def _learn_from(self, options: dict[str, Any], context: JudgeContext) -> None:
        from tui_trainer.config import RewardTrainConfig
        from tui_trainer.engine.reward_online import OnlineReward
        from tui_trainer.plugins.builtin.human import OPTIONS as HUMAN_OPTIONS
        from tui_trainer.plugins.builtin.human import HumanJudge

        if options["learn_from"] != "human":
            raise ConfigError(f"judge {self.name}: learn_from must be 'human', got {options['learn_from']!r}")
        for name in ("questions", "refit_every", "epochs", "batch_size", "agreement_window"):
            if options[name] < 1:
                raise ConfigError(f"judge {self.name}: {name} must be >= 1, got {options[name]}")
        if not 0 <= options["eval_fraction"] < 1:
            raise ConfigError(f"judge {self.name}: eval_fraction must be in [0, 1), got {options['eval_fraction']}")
        from tui_trainer.engine.reward import check_output_dir

        if options.get("path"):
            out = options["path"]
        elif context.run_dir is not None:
            out = str(context.run_dir / "reward_model")
        else:
            raise ConfigError(f"judge {self.name}: learn_from needs a run directory or a path to write the "
                              "reward model to")
        check_output_dir(out)  # a file or another directory there is refused now, not at the first refit
        self.interactive = True  # the engine thread: it trains MLX models and asks a person
        self.questions = options["questions"]
        self.normalise = bool(options["normalise"])
        self.human = HumanJudge({o.name: o.default for o in HUMAN_OPTIONS}, context)
        cfg = RewardTrainConfig(model=options.get("model") or context.extra.get("model"), epochs=options["epochs"],
                                adapter_type=options["adapter"], chat_template=bool(options["chat_template"]),
                                learning_rate=options["learning_rate"], layers=options["layers"],
                                eval_fraction=options["eval_fraction"], batch_size=options["batch_size"],
                                seed=context.seed)
        self.online = OnlineReward(cfg, out, refit_every=options["refit_every"], window=options["agreement_window"],
                                   log=self.log)
        self._resume_labels()

    def _resume_labels(self) -> None:
        """A resumed run: the answers already in labels.jsonl count; the first step refits on them."""
        from tui_trainer.errors import DataError
        from tui_trainer.preferences import pairs_of_labels

        if self.human.labels is None or not self.human.labels.is_file():
            return
        try:
            pairs, _ = pairs_of_labels(self.human.labels, str(self.human.labels))
        except DataError:  # no usable pair yet (only ties / skips)
            return
        self.online.pairs += pairs
        self.online.new = len(pairs)
        self.log(f"judge {self.name}: {len(pairs)} earlier answer(s) from {self.human.labels}; refitting at the "
                 "first step")

    def metrics(self) -> dict[str, float]:
        """The online loop's numbers (labels, held-out accuracy, agreement); none otherwise."""
        return self.online.metrics() if self.online is not None else {}

    @property
    def scorer(self):
        """The RewardScorer; loads the reward model on its own base the first time if no policy was shared."""
        if self._scorer is None:
            from tui_trainer.engine.reward import RewardScorer

            self._scorer = RewardScorer.load(self.path, self.model, batch_size=self.batch_size)
            self.log(f"judge {self.name}: Hugging Face reward model {self.path} loaded" if self.hf else
                     f"judge {self.name}: reward model {self.path} loaded on its own copy of its base")
        return self._scorer

    def share_policy(self, policy: Any, tokenizer: Any) -> bool:
        """Called once the run's policy is built. Score on its base with the reward adapter switched
        in when it is the same base and the policy trains an adapter (so its base weights never
        change); True when it does. Otherwise the reward model loads its own copy now, so a base
        that cannot be loaded stops the run at start-up, not at its first score."""
        if self.online is not None:
            return False  # it trains its own reward model, on its own copy of the base
        shared = self._share(policy, tokenizer)
        if not shared:
            self.scorer  # noqa: B018  (loads it)
        return shared

    def _share(self, policy: Any, tokenizer: Any) -> bool:
        from tui_trainer.engine.reward import SharedBaseReward, base_signature, same_base
        from tui_trainer.errors import ModelError

        if not self.share_base or self._scorer is not None or self.model is not None or self.hf:
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

    def rewards(self, prompts: list[str], completions: list[str], normalised: bool = False) -> list[float]:
        if self.online is not None:
            return self.online.rewards(prompts, completions, normalised=normalised)
        return self.scorer.rewards(prompts, completions, normalised=normalised)

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        if self.online is not None:
            self.learn(prompts, completions)
        return self.rewards(prompts, completions, normalised=self.normalise)

    def learn(self, prompts: list[str], completions: list[str]) -> None:
        """Ask the person about the least sure pairs of this batch; refit when enough answers came."""
        from tui_trainer.engine.reward import preference_probability
        from tui_trainer.engine.reward_online import least_sure_pairs
        from tui_trainer.preferences import Pair, user_prompt

        online = self.online
        raw = online.rewards(prompts, completions)
        for i, j in least_sure_pairs(prompts, completions, raw, self.questions):
            verdict = self.human.compare(prompts[i], completions[i], completions[j])
            if verdict.choice not in ("a", "b"):
                continue  # a tie or a skip teaches nothing
            win, lose = (i, j) if verdict.choice == "a" else (j, i)
            online.add(Pair(user_prompt(prompts[i]), completions[win], completions[lose]),
                       preference_probability(raw[win], raw[lose]))
        if online.refit_due:
            online.refit()

    def probability(self, prompt: str, a: str, b: str) -> float:
        """P(a > b) = sigma(r_a - r_b)."""
        from tui_trainer.engine.reward import preference_probability

        r_a, r_b = self.rewards([prompt, prompt], [a, b])
        return preference_probability(r_a, r_b)

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        p = self.probability(prompt, a, b)
        if p == 0.5:
            return Verdict("tie", 0.5)
        return Verdict("a", p) if p > 0.5 else Verdict("b", 1.0 - p)
