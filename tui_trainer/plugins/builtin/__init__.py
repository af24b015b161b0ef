"""The built-in judges, registered through the same hook as any plugin
(entry point ``builtin = "tui_trainer.plugins.builtin"``).

Each judge's module is imported only when the judge is built, so listing the
plugins never loads llama.cpp or MLX.
"""

from __future__ import annotations

from typing import Any

from tui_trainer.plugins.builtin.answer import OPTIONS as ANSWER_OPTIONS
from tui_trainer.plugins.builtin.human import OPTIONS as HUMAN_OPTIONS
from tui_trainer.plugins.builtin.llama_options import OPTIONS as LLAMA_OPTIONS
from tui_trainer.plugins.builtin.reward_function import OPTIONS as REWARD_FUNCTION_OPTIONS
from tui_trainer.plugins.builtin.reward import OPTIONS as REWARD_OPTIONS
from tui_trainer.plugins.builtin.rules import OPTIONS as RULES_OPTIONS
from tui_trainer.plugins.hookspecs import hookimpl
from tui_trainer.plugins.judge import JudgeContext


def _rules(options: dict[str, Any], context: JudgeContext):
    from tui_trainer.plugins.builtin.rules import RulesJudge

    return RulesJudge(options, context)


def _answer(options: dict[str, Any], context: JudgeContext):
    from tui_trainer.plugins.builtin.answer import AnswerJudge

    return AnswerJudge(options, context)


def _reward_function(options: dict[str, Any], context: JudgeContext):
    from tui_trainer.plugins.builtin.reward_function import RewardFunctionJudge

    return RewardFunctionJudge(options, context)


def _human(options: dict[str, Any], context: JudgeContext):
    from tui_trainer.plugins.builtin.human import HumanJudge

    return HumanJudge(options, context)


def _llama(options: dict[str, Any], context: JudgeContext):
    from tui_trainer.plugins.builtin.llama import LlamaJudge

    return LlamaJudge(options, context)


def _reward(options: dict[str, Any], context: JudgeContext):
    from tui_trainer.plugins.builtin.reward import RewardJudge

    return RewardJudge(options, context)


@hookimpl
def register_judges(register) -> None:
    register("rules", _rules, kind="pointwise", options=RULES_OPTIONS,
             description="length target, keywords/regex present or absent, valid JSON, a Python callable")
    register("answer", _answer, kind="pointwise", options=ANSWER_OPTIONS,
             description="1 when the completion's answer matches the row's answer column (final number "
                         "as in GSM8K #### / \\boxed{}, exact, normalised or regex), else 0")
    register("reward_function", _reward_function, kind="pointwise", options=REWARD_FUNCTION_OPTIONS,
             description="a TRL-style reward function f(prompts, completions, **columns) -> list[float]")
    register("human", _human, kind="both", options=HUMAN_OPTIONS,
             description="a person answers: 1/2 (a/b), t tie, s skip, or a 0-9 rating; labels.jsonl")
    register("llama", _llama, kind="both", options=LLAMA_OPTIONS,
             description="a local LLM via llama.cpp: rating / A-B read from the next-token distribution")
    register("reward", _reward, kind="both", options=REWARD_OPTIONS,
             description="a reward model from `tui-trainer reward train`: r(prompt, completion); pairwise sigma(r_a - r_b)")
