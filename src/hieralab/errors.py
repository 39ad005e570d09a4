"""The mistakes a user can fix. The command line prints their message as it is (one line a problem) and no
traceback; everything here subclasses the builtin a library caller would expect (``ValueError``, ``RuntimeError``,
``OSError``)."""

from __future__ import annotations


class HieralabError(Exception):
    """Base class: a problem with what the user asked for, the files given, or the run folder."""


class ConfigError(HieralabError, ValueError):
    """One or more config values out of range or of the wrong type; ``problems`` has one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):  # pickles (to other ranks) with its list, not the joined text
        return type(self), (self.problems,)


class DataError(HieralabError, ValueError):
    """The data cannot be used as given (no readable sample, wrong channels, a list without a label column...)."""


class CheckpointError(HieralabError, ValueError):
    """A weights file or folder that is unreadable, unsafe, or made for another model."""


class RunFolderError(HieralabError, RuntimeError):
    """The run folder is in use, holds something else, or was asked to resume under other settings."""


class DivergedError(HieralabError, RuntimeError):
    """The loss became NaN / inf or exploded; training stopped before the bad step touched the weights."""


class DiskFullError(HieralabError, OSError):
    """A write failed because the disk (or a quota) is full; what was written before is intact."""
