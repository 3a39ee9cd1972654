"""User-facing errors: the CLI prints their message as one line and exits with ``exit_code``."""

from __future__ import annotations


class GenbenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code: int = 2


class SpecError(GenbenchError):
    """A benchmark spec or a command-line override is invalid."""


class DatasetError(GenbenchError):
    """A data set cannot be found, downloaded or read."""


class CheckpointError(GenbenchError):
    """A checkpoint file is missing, unreadable or belongs to another generator/config."""
