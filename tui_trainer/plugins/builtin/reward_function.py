"""The ``reward_function`` judge: a TRL-style reward function as a judge.

``function: my_rewards:correctness`` (or ``path/to/rewards.py:correctness``) is called the way
TRL's GRPOTrainer calls reward functions::

    correctness(prompts=[...], completions=[...], **columns) -> list[float]

with the batch's prompts and completions (text, TRL's standard format) and the dataset columns
of each sample as lists (``answer=[...]``). A function with ``**kwargs`` gets every column; one
without gets those it names (a named column without a default must be in every row). ``None``
in the returned list skips that sample (TRL ignores it too). TRL's ``completion_ids`` and
``trainer_state`` are not passed.
"""

from __future__ import annotations

import inspect
from typing import Any

from tui_trainer.errors import ConfigError
from tui_trainer.plugins.hookspecs import Option
from tui_trainer.plugins.judge import JudgeContext, column_use

OPTIONS = [
    Option("function", str, None, "the reward function, 'pkg.module:func' or 'path/to/file.py:func', called as "
           "func(prompts=..., completions=..., **columns) -> list[float]", aliases=("reward_func", "func")),
]

NOT_PASSED = ("completion_ids", "trainer_state")


class RewardFunctionJudge:
    def __init__(self, options: dict[str, Any], context: JudgeContext) -> None:
        from tui_trainer.plugins.manager import import_object

        self.name = context.name
        ref = options["function"]
        if not ref:
            raise ConfigError(f"judge {self.name}: option function is required ('pkg.module:func' or "
                              "'path/to/file.py:func')")
        func = import_object(ref)
        if not callable(func):
            raise ConfigError(f"judge {self.name}: {ref!r} is not callable")
        self.func = func
        self.takes = column_use(func, skip=0)
        params = _parameters(func)
        for name in NOT_PASSED:
            p = params.get(name)
            if p is not None and p.default is p.empty and p.kind is not p.VAR_KEYWORD:
                raise ConfigError(f"judge {self.name}: {ref} needs {name}, which tui-trainer does not pass; "
                                  f"give it a default ({name}=None)")
        # prompts= and completions= go by keyword, as TRL passes them, to a function that takes them
        self.passes = {k for k in ("prompts", "completions") if k in params or self.takes.every}
        if "completions" not in self.passes:
            raise ConfigError(f"judge {self.name}: {ref} takes no completions parameter; a reward function is "
                              "called as func(prompts=..., completions=..., **columns)")
        self.columns = self.takes.required  # every row must have these

    def score(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float | None]:
        kwargs: dict[str, Any] = {k: v for k, v in columns.items() if self.takes.every or k in self.takes.named}
        if "prompts" in self.passes:
            kwargs["prompts"] = list(prompts)
        kwargs["completions"] = list(completions)
        return self.func(**kwargs)


def _parameters(func: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return {}
