"""The error types a user can fix: every one prints as a single ``error:`` line.

Each carries a message that names the file, field or command at fault and how to fix
it. The CLI catches :class:`PcdartsError` (and nothing broader) and prints it without a
traceback; ``--debug`` (or ``PCDARTS_DEBUG=1``) shows the traceback.
"""
from __future__ import annotations


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


__all__ = ["PcdartsError", "ConfigError", "TrainError", "RunDirError", "CheckpointError", "DivergenceError",
           "CheckpointWriteError"]
