"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback
(`cause` and `describe` make that one line; a job names the step that raised it)."""


class ThresherError(Exception):
    """Base class: the message names the file, row, field or shard, and says how to fix it."""


class InputError(ThresherError):
    """Malformed user input: a URL list, a config file, a pool directory."""


class StageError(ThresherError):
    """A stage could not finish; what it finished is kept and a re-run resumes."""


def cause(err: BaseException) -> BaseException:
    """The error a Ray task raised, out of its RayTaskError wrapper (an InputError raised inside a task
    is still the user's input error)."""
    seen = 0
    # RayTaskError(InputError) is an InputError too, but its message is the task's whole traceback
    while seen < 8 and (not isinstance(err, ThresherError) or type(err).__name__.startswith("RayTaskError")):
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None or inner is err:
            break
        err, seen = inner, seen + 1
    return err


def describe(err: BaseException) -> str:
    """An error in one line: a Thresher error's message; any other is named unexpected, with what to do."""
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ThresherError):
        return message
    return (
        f"unexpected {type(err).__name__}: {message[:500]} (an input Thresher does not check yet, or a bug: "
        f"please report it; THRESHER_DEBUG=1 shows the traceback)"
    )
