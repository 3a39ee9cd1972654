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


def _found_under(folder: Path) -> list[Path]:
    """The run and speed directories anywhere under ``folder``, in path order (a run's own
    model folders are not searched: a run directory is a leaf)."""
    found: list[Path] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        if is_run_dir(sub) or is_speed_dir(sub):
            found.append(sub)
        else:
            found.extend(_found_under(sub))
    return found


def load_inputs(paths: list[Path], history: Path | None = None) -> ReportInputs:
    """Read run and speed directories (in the order given; a folder that is neither stands
    for every one found under it) and the speed history file."""
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
        elif path.is_dir() and (found := _found_under(path)):
            # A folder of runs (`bench report runs/`): every run and speed directory in it.
            for sub in found:
                if sub.resolve() not in seen:
                    seen.add(sub.resolve())
                    if is_run_dir(sub):
                        run = load_run(sub)
                        inputs.runs.append(run)
                        inputs.models.extend(run.models.values())
                    else:
                        inputs.speed.append(load_speed(sub))
        else:
            raise GenbenchError(
                f"{path}: not a genbench run directory (no run.json) nor a speed directory "
                "(no speed.json), and none is under it; pass directories made by `bench "
                "run` or `bench speed`, or a folder holding them"
            )
    if history is not None:
        inputs.history = read_speed_history(history)
        inputs.history_path = Path(history)
    return inputs
