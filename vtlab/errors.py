"""Every error that vtlab reports to the user as one clear message (no traceback).

`ConfigError` is raised by validation before anything is built; the CLI prints `vtlab: error: <message>` and
exits with status 2. `InvalidCellError` is the subset that makes one cell of a sweep impossible (for example
a factor that does not divide the patch grid): inside a `-m` sweep such a cell is recorded as skipped. The
others are raised while a run works (a checkpoint that does not fit, unreadable data, a NaN loss).
"""

from __future__ import annotations


class VtlabError(Exception):
    """Base class of every error whose message is meant for the user as is."""


class ConfigError(VtlabError, ValueError):
    """A configuration value is invalid; the message names the key, the value and what is valid."""


class InvalidCellError(ConfigError):
    """A well-formed configuration that describes an impossible combination (skipped inside sweeps)."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be read or does not fit the model (vtlab.checkpoints); the message says why."""


class ArchitectureMismatchError(ConfigError):
    """A training checkpoint was written for another architecture than the current config describes."""


class DataError(VtlabError):
    """The data on disk cannot be used as is (unreadable image, ...)."""

    def __init__(self, message: str = "") -> None:
        # re-raised in the main process by a DataLoader worker (torch's ExceptionWrapper): its message is
        # "Caught DataError in DataLoader worker process N. Original Traceback ... DataError: <ours>"; keep ours
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split("DataError: ", 1)[1] if "DataError: " in last else last
        super().__init__(message)


class NonFiniteLossError(VtlabError):
    """The training loss became NaN or infinite; the run stops without touching earlier checkpoints."""


class WriteError(VtlabError):
    """A result or checkpoint could not be written (disk full, permissions); the earlier file is kept."""
