"""Text from models, data and plugins, made safe to print on a terminal.

Prompts, completions and judge messages are untrusted: an ``ESC]0;...BEL`` sets the
window title, ``ESC[2J`` clears the screen. Every path that prints such text (the
TUI, the console human judge, ``rollout``, headless logs, error lines) passes it
through :func:`printable` first.
"""

from __future__ import annotations

import re

# C0/C1 control characters (ESC above all): each is shown as the replacement character
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with control characters replaced by U+FFFD (newlines and tabs kept)."""
    return _CONTROL.sub("\ufffd", str(text))
