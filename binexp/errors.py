"""Errors a user can fix. The CLI prints their message without a traceback and exits non-zero."""


class BinexpError(Exception):
    exit_code = 2


class ConfigError(BinexpError, ValueError):
    """A config value is wrong or two values contradict each other; the message names the keys."""


class NonFiniteLossError(BinexpError):
    """The training loss became NaN or infinite."""

    exit_code = 3


class RunInterrupted(BinexpError):
    """A run stopped on a signal after saving a resumable checkpoint."""

    exit_code = 130
