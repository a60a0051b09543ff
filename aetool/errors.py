"""The one exception type aetool raises for problems a user can fix.

The command line turns an `AetoolError` into one clear sentence on stderr and exit code 1;
anything else is a bug and keeps its traceback.
"""


class AetoolError(Exception):
    """A problem with the user's input, files or environment, explained in one sentence."""


class DataError(AetoolError):
    """A data file is missing, truncated or not what it claims to be."""


class RunError(AetoolError):
    """A run folder is missing, incomplete or unreadable."""
