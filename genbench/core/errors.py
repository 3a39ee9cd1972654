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


class StoreError(GenbenchError):
    """A results file is missing, unreadable or written by an unknown schema version."""


class UnknownNameError(GenbenchError):
    """A name no registry knows (a generator, data set, extractor, metric ...); the message
    names where it came from and lists the valid choices."""

    def __init__(self, kind: str, name: str, choices: list[str], where: str | None = None) -> None:
        self.kind, self.name, self.choices, self.where = kind, name, choices, where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}unknown {kind} {name!r}; valid choices: {', '.join(choices)}")
