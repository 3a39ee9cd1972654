"""User-facing errors: the CLI prints their message as one line and exits with ``exit_code``."""

from __future__ import annotations


class GenbenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code: int = 2
    label: str = "error: "
    """How the CLI introduces the message: ``bench: error: ...``."""


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


class Interrupted(GenbenchError):
    """The user pressed Ctrl-C (SIGINT): the message says how to finish the work."""

    exit_code = 130
    label = ""


class ModelsFailed(GenbenchError):
    """A run finished, but some models failed (diverged, non-finite samples); their
    reasons are in the report. ``bench`` exits with 1."""

    exit_code = 1


class Busy(GenbenchError):
    """Another live process is working in the same run directory."""


class NonFinite(GenbenchError):
    """A NaN or infinite value where a measurement needs finite numbers (a diverged model's
    loss or samples, a corrupt image array): never turned into a metric."""
