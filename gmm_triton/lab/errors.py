"""The failures a user can cause, and how the command line reports them: one ``gmm-triton CMD: error: MESSAGE``
line on stderr, never a traceback, and the exit status of the kind of failure (``cli.main``):

- 2, :class:`UsageError`: the arguments are wrong or do not fit the output folder (a resume with another
  configuration, a model file of another kind). Fix the command.
- 1, :class:`CommandError` and ``OSError``: the run failed on something outside the arguments (a damaged or
  crafted file, a folder held by another run, a read-only path, a full disk, a diverging sampler).
- 130: interrupted (Ctrl-C); what finished is kept, and a rerun resumes.

Programming errors (anything else) keep their traceback: they are bugs to report, not the user's to fix.
"""
from __future__ import annotations


class CommandError(Exception):
    """A run failed on something outside its arguments; the message says what and what to do."""

    exit_code = 1


class UsageError(CommandError, ValueError):
    """Bad arguments, or arguments that do not fit the output folder; the message names them."""

    exit_code = 2


def os_message(e: OSError) -> str:
    """An OSError as one line: what failed, on which path ("Permission denied: 'out/model'")."""
    if e.strerror and e.filename is not None:
        where = repr(e.filename) + (f" -> {e.filename2!r}" if e.filename2 is not None else "")
        return f"{e.strerror}: {where}"
    return str(e) or type(e).__name__
