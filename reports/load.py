"""The inputs of a report, read from the results store: run directories, speed directories
and the speed history (``genbench.store``), never live objects.

Missing optional files (a model still training, an older run without KID) leave the
corresponding fields empty; a file that exists but cannot be parsed is a usage error naming
it, because a report silently built from part of the data would mislead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from genbench.core.errors import GenbenchError
from genbench.store.files import read_speed_history
from genbench.store.records import SpeedResult
from genbench.store.runs import (
    ModelResult,
    RunResult,
    SpeedDirectory,
    is_run_dir,
    is_speed_dir,
    load_run,
    load_speed,
)


@dataclass
class ReportInputs:
    """Everything one report is rendered from."""

    runs: list[RunResult] = field(default_factory=list)
    models: list[ModelResult] = field(default_factory=list)
    speed: list[SpeedDirectory] = field(default_factory=list)
    history: list[SpeedResult] = field(default_factory=list)
    history_path: Path | None = None
    history_error: str | None = None


def load_inputs(paths: list[Path], history: Path | None = None) -> ReportInputs:
    """Read run and speed directories (in the order given) and the speed history file."""
    inputs = ReportInputs()
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        key = path.resolve()
        if key in seen:  # the same directory twice (a shell glob and a name) counts once
            continue
        seen.add(key)
        if is_run_dir(path):
            run = load_run(path)
            inputs.runs.append(run)
            inputs.models.extend(run.models.values())
        elif is_speed_dir(path):
            inputs.speed.append(load_speed(path))
        elif not path.exists():
            raise GenbenchError(f"{path}: no such directory")
        else:
            raise GenbenchError(
                f"{path}: not a genbench run directory (no run.json) nor a speed directory "
                "(no speed.json); pass directories made by `bench run` or `bench speed`"
            )
    if history is not None:
        inputs.history = read_speed_history(history)
        inputs.history_path = Path(history)
    return inputs
