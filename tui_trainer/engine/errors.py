"""Errors the engine raises for bad input; front ends print them as one line."""


class TrainerError(Exception):
    """Bad input or a run that cannot go on; ``str(exc)`` is one line for the user."""


class ModelError(TrainerError):
    """A model path or file that cannot be loaded."""


class ConfigError(TrainerError):
    """A configuration value that is unknown, of the wrong type or out of range."""


class DataError(TrainerError):
    """Prompt data that is missing, empty or malformed."""


class StepInterrupted(Exception):
    """The step in flight was abandoned on request (second ``q``, Ctrl-C, SIGTERM, SIGHUP).

    Not a TrainerError: nothing was wrong with the input. The trainer goes back to the state
    at the end of the last completed step and checkpoints that.
    """
