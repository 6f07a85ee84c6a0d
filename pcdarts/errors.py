"""The error types a user can fix: every one prints as a single ``error:`` line.

Each carries a message that names the file, field or command at fault and how to fix
it. The CLI prints them (:data:`USER_ERRORS`) through one path, :func:`report_user_errors`, without a
traceback; ``--debug`` (or ``PCDARTS_DEBUG=1``) shows the traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Optional


class PcdartsError(Exception):
    """Base of every error caused by input a user can change."""


class ConfigError(PcdartsError, ValueError):
    """A configuration value or key that cannot be used; the message names the key and the fix."""


class TrainError(ConfigError):
    """A training configuration, run directory or input that cannot be used (``pcdarts train``).

    The message names the file or config field and says how to fix it.
    """


class RunDirError(PcdartsError, ValueError):
    """A run directory that cannot be used (missing, not a run, a run of another kind, or an existing run)."""


class CheckpointError(PcdartsError, ValueError):
    """A checkpoint file that is missing, truncated, corrupt or of another kind."""


class DivergenceError(PcdartsError, RuntimeError):
    """A loss or the architecture weights became non-finite; the run was stopped."""


class CheckpointWriteError(PcdartsError, RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the last complete one is intact."""


class MissingDependencyError(PcdartsError, ImportError):
    """An optional package or program is not installed; the message names what to install."""


class ExternalToolError(PcdartsError, RuntimeError):
    """An external program (e.g. graphviz ``dot``) failed; the message quotes its own error."""


# what the command line prints as one line and exit 2: input a user can fix, not a bug
USER_ERRORS: tuple[type[BaseException], ...] = (PcdartsError, FileNotFoundError, FileExistsError, PermissionError)
USER_ERROR_EXIT = 2


def error_line(e: BaseException) -> str:
    """The one ``error: ...`` line of a user error (a KeyError's message without its quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return f"error: {msg}"


def report_user_errors(call: Callable[[], Any], *, debug: bool = False,
                       emit: Optional[Callable[[str], None]] = None) -> int:
    """The command line's one error path: ``call()``'s exit code (None = 0); a
    :data:`USER_ERRORS` error is printed as one :func:`error_line` (through ``emit``,
    default stderr) and gives exit code 2. ``debug`` re-raises it for the traceback.
    Every entry point (``pcdarts`` and ``python -m pcdarts.nb201``) goes through here;
    subcommand handlers do not catch errors themselves."""
    try:
        return int(call() or 0)
    except USER_ERRORS as e:
        if debug:
            raise
        (emit or _to_stderr)(error_line(e))
        return USER_ERROR_EXIT


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


__all__ = ["PcdartsError", "MissingDependencyError", "ExternalToolError", "USER_ERRORS", "USER_ERROR_EXIT",
           "error_line", "report_user_errors",
           "ConfigError", "TrainError", "RunDirError", "CheckpointError", "DivergenceError",
           "CheckpointWriteError"]
