"""What the library tells its caller besides results: the exception types aetool raises for
problems a user can fix, and the progress of long work.

The command line turns an `AetoolError` into one clear sentence on stderr and exit code 1,
and a `SettingError` (a bad value of one setting) into a usage error naming the option, exit
code 2. Anything else is a bug and keeps its traceback.

Progress has one protocol: a long function (fit, search, corrupt, embed, a study, a data
download) takes a `ProgressFn` and calls it with a `ProgressEvent` as its work moves on; the
command line shows the events (`aetool.cli.longrun.Progress`: a live bar on a terminal, plain
lines in a log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class AetoolError(Exception):
    """A problem with the user's input, files or environment, explained in one sentence."""


class SettingError(AetoolError):
    """One setting has a value that cannot work. `field` names the setting as the library
    calls it (`val_size`, `name`, `device`, ...); the message is one sentence that names it
    that way too, so a Python caller is never told about command-line options."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class DataError(AetoolError):
    """A data file is missing, truncated or not what it claims to be."""


class DataSettingError(SettingError, DataError):
    """A data setting (the data set's name, the validation size) that cannot work."""


class RunError(AetoolError):
    """A run folder is missing, incomplete, unreadable or in use."""


def os_reason(exc: OSError) -> str:
    """What the operating system said, in lower case for the middle of a sentence
    (`PermissionError(13, 'Permission denied', '/x')` -> "permission denied")."""
    return (exc.strerror or first_line(exc)).lower()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): enough
    to say what went wrong in one sentence, without a library's paragraph of advice."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class ProgressEvent:
    """How far one task of long work is: `done` of `total` units (`total` None while unknown).

    `task` says what kind of work ("fit", "search", "corrupt", "embed", "report", "download"),
    `name` which one, if any (a run, ED=4, a file downloaded), `unit` what is counted
    ("epoch", "models", "rows", "runs", "bytes"), `status` what is happening now, in words."""

    task: str
    done: float
    total: float | None = None
    status: str = ""
    unit: str = ""
    name: str = ""


# The one progress callback of the library: called with each `ProgressEvent`.
ProgressFn = Callable[[ProgressEvent], None]
