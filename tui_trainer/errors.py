"""The project's errors, at the bottom of the import graph (nothing here imports anything
heavy): config, data, plugins and engine raise them; front ends print them as one line
with :func:`one_line`."""


class TrainerError(Exception):
    """Bad input or a run that cannot go on; ``str(exc)`` is one line for the user."""


class ModelError(TrainerError):
    """A model path or file that cannot be loaded."""


class ConfigError(TrainerError):
    """A configuration value that is unknown, of the wrong type or out of range."""


class DataError(TrainerError):
    """Prompt data that is missing, empty or malformed."""


class JudgeError(Exception):
    """A judge failed (bad output, exception, timeout); the message is one line.
    Plugins raise it (``from tui_trainer.plugins import JudgeError``)."""


class JudgeTimeout(JudgeError):
    """A judge call ran past its time limit."""


class JudgeFailure(TrainerError):
    """The judges failed in a way that must stop the run (``judge_failure: stop``,
    or too many failed calls in a row); the message is one line for the user."""


class StepInterrupted(Exception):
    """The step in flight was abandoned on request (second ``q``, Ctrl-C, SIGTERM, SIGHUP).

    Not a TrainerError: nothing was wrong with the input. The trainer goes back to the state
    at the end of the last completed step and checkpoints that.
    """


def one_line(exc: BaseException | None, default: str = "the run failed") -> str:
    """An exception as one line: the first line of its message, prefixed by its type unless
    it is one of ours (those are written for the user)."""
    if exc is None:
        return default
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    if isinstance(exc, (TrainerError, JudgeError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
