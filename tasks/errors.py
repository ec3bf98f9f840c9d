"""The errors a person acts on, kept apart so light modules can raise them.

A `StepError` is a mistake in the input or the params, or a state of the machine:
a retry cannot fix it, so it is not retried, and a command ends with its message on
one line. A `NetworkError` is a source that did not answer: a later try may, so the
steps that use the network retry it. An `OSError` saying the disk is full, a folder
is read-only or a file is missing is the machine's state, and is told the same way.
"""

from __future__ import annotations

import errno
import os
import shutil

# What a person does about each state of the machine that stops a run.
MACHINE = {
    errno.ENOSPC: "free some space there",
    errno.EDQUOT: "free some space there or raise the quota",
    errno.EROFS: "run in a writable folder",
    errno.EACCES: "give this user access to it",
    errno.EPERM: "give this user access to it",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "check the path",
}


class StepError(Exception):
    """A step cannot go on (bad input, too few images...); the message says why."""


class NetworkError(StepError):
    """A source did not answer as it should; a later try may succeed."""


def retryable(exc: BaseException) -> bool:
    """Whether trying again can help: a network failure or an unforeseen error, not a person's mistake."""
    return isinstance(exc, NetworkError) or not (isinstance(exc, StepError) or _machine(exc))


def _machine(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in MACHINE


def describe(exc: BaseException) -> str | None:
    """One line for an error a person acts on; None for anything else (a bug, whose traceback helps)."""
    if isinstance(exc, StepError):
        return str(exc)
    if not _machine(exc):
        return None
    what = (exc.strerror or os.strerror(exc.errno)).lower()
    where = os.fsdecode(exc.filename) if exc.filename is not None else os.getcwd()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(where if os.path.isdir(where) else os.path.dirname(where) or ".").free
        what += f" ({free / 2**20:,.1f} MiB free)"
    return f"{what}: {where}: {MACHINE[exc.errno]} and run the same command again"
