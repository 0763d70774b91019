"""Errors a user can fix. The CLI prints their message without a traceback and exits non-zero."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


class BinexpError(Exception):
    exit_code = 2


class ConfigError(BinexpError, ValueError):
    """A config value is wrong or two values contradict each other; the message names the keys."""


def parse_choice(choices: type[E], value: Any, key: str) -> E:
    """`value` (a member or its value) as a member of the enum `choices`; a ConfigError naming `key` if it is none."""
    try:
        return choices(getattr(value, "value", value))
    except ValueError:
        raise ConfigError(f"{key}={value!r}: allowed are {', '.join(c.value for c in choices)}") from None


class OtherJobThere(ConfigError):
    """A re-run's job directory holds the results of another job (its settings differ)."""


class NonFiniteLossError(BinexpError):
    """The training loss became NaN or infinite."""

    exit_code = 3


class RunInterrupted(BinexpError):
    """A run stopped on a signal after saving a resumable checkpoint."""

    exit_code = 130


def raised_from(err: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first of `err` and the errors it was raised from that is one of `kinds`, or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__  # `raise ... from`: a wrapper; a mere __context__ is another failure
    return None


def user_error(err: BaseException) -> BinexpError | None:
    """The BinexpError that `err` is or was raised from: Hydra's instantiate wraps what a constructor raises
    (`method.scope=foo` fails inside ABR's), and its message should reach the user as it was written."""
    return raised_from(err, (BinexpError,))


def without_search_path(err: BaseException) -> str:
    """A Hydra error's message without the config search path Hydra appends (a script's one-line error)."""
    return str(err).split("\nConfig search path")[0].strip()
