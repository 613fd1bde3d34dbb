"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback."""


class ThresherError(Exception):
    """Base class: the message names the file, row, field or shard, and says how to fix it."""


class InputError(ThresherError):
    """Malformed user input: a URL list, a config file, a pool directory."""


class StageError(ThresherError):
    """A stage could not finish; what it finished is kept and a re-run resumes."""
