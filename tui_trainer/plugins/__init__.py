"""Judge plugins: what a plugin author imports.

    from tui_trainer.plugins import Option, Verdict, hookimpl

Nothing heavy is imported here (no MLX, no llama.cpp).
"""

from tui_trainer.plugins.hookspecs import ENTRY_POINT_GROUP, Option, hookimpl, hookspec
from tui_trainer.plugins.judge import JudgeContext, JudgeError, JudgeFailure, Prompter, Verdict

__all__ = [
    "ENTRY_POINT_GROUP", "Option", "hookimpl", "hookspec",
    "JudgeContext", "JudgeError", "JudgeFailure", "Prompter", "Verdict",
]
