"""User-facing errors: the CLI prints their message (no traceback) and exits with 2."""

from __future__ import annotations


class FgrlhfError(Exception):
    """An error caused by the user's input (config, data, arguments), not by a bug.

    The message must say what was wrong, where, and how to fix it.
    """

    exit_code = 2


class ConfigError(FgrlhfError):
    """Invalid configuration file, override or field value."""


class DataError(FgrlhfError):
    """A malformed data file or row (the message names the file and row)."""


class RunFailed(FgrlhfError):
    """A training run stopped on a fault it could not recover from (the message says how to resume)."""

    exit_code = 3
