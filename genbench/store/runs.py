"""Run and speed directories read back into typed records (``genbench.load_run``, reports).

Missing optional files (a model still training, an older run without KID) leave the
corresponding fields empty; a file that exists but cannot be parsed is a one-line
``StoreError`` naming it, because a result silently built from part of the data would
mislead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.core.errors import StoreError
from genbench.store import files, versions
from genbench.store.records import (
    SCHEMA_VERSION,
    Environment,
    ModelMetrics,
    RunStatus,
    SpeedRun,
    Timing,
    TrainEvalEntry,
    TrainLogEntry,
)


@dataclass
class ModelResult:
    """One evaluated model of a run: the records of ``<run>/<model>/``."""

    name: str
    metrics: ModelMetrics
    timing: Timing | None
    train_log: list[TrainLogEntry]
    samples: Path | None
    run: RunResult = field(repr=False)
    trajectory: Path | None = None
    """``trajectory.png``: x0 predictions along sampling (diffusion models)."""
    train_eval: list[TrainEvalEntry] = field(default_factory=list)
    """Quality measured during training (``[evaluate] every``), by step."""
    """The run this model belongs to."""

    def value(self, metric: str) -> float | None:
        """FID, IS, KID or bits/dim of this model; None when not computed."""
        return self.metrics.value(metric)


@dataclass
class RunResult:
    """A ``bench run`` directory: status, environment, resolved spec and its finished models
    (in run order). ``genbench.run`` returns one; ``genbench.load_run`` reads one."""

    path: Path
    status: RunStatus
    environment: Environment
    spec: dict[str, Any]
    models: dict[str, ModelResult] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return self.status.complete

    @property
    def failed(self) -> dict[str, str]:
        """The models that failed (diverged, non-finite samples) and why."""
        return {name: m.metrics.failure for name, m in self.models.items() if m.metrics.failure}

    def __getitem__(self, model: str) -> ModelResult:
        """The result of ``model``; a ``KeyError`` listing the finished models otherwise."""
        try:
            return self.models[model]
        except KeyError:
            raise KeyError(
                f"{model!r} has no result in {self.path}; finished: {', '.join(self.models)}"
            ) from None


@dataclass
class SpeedDirectory:
    """A ``bench speed`` directory: its ``speed.json``."""

    path: Path
    run: SpeedRun

    @property
    def speed_id(self) -> str:
        return self.path.name


def is_run_dir(path: Path) -> bool:
    return (Path(path) / files.STATUS).is_file()


def is_speed_dir(path: Path) -> bool:
    return (Path(path) / files.SPEED).is_file()


def read_status(run_dir: Path) -> RunStatus:
    """``run.json`` of a run directory, or a one-line error saying it is not one; a run
    killed between writing its spec and its status reads as running."""
    run_dir = Path(run_dir)
    if not (run_dir / files.SPEC).is_file():
        raise StoreError(
            f"{run_dir}: not a run directory (no spec.toml); pass a directory that "
            "`bench run` created, e.g. runs/<run-id>"
        )
    if not (run_dir / files.STATUS).is_file():
        return RunStatus(run_id=run_dir.name)
    return files.read_record(run_dir / files.STATUS, RunStatus)


def schema_version_of(run_dir: Path) -> int:
    """The schema version a run was written under: that of its ``run.json``, else of its
    ``environment.json`` (both are written right after the spec); the current one when the
    run was killed before either existed."""
    for name in (files.STATUS, files.ENVIRONMENT):
        path = Path(run_dir) / name
        if path.is_file():
            data = files.load_json(path)
            version = versions.version_of(data) if isinstance(data, dict) else None
            if not versions.readable(version):
                raise StoreError(
                    f"{path}: written by results schema version "
                    f"{data.get('schema_version') if isinstance(data, dict) else '?'}; this "
                    f"genbench reads versions {versions.OLDEST} to {SCHEMA_VERSION}"
                )
            return int(version)  # type: ignore[arg-type]  # readable() checked it
    return SCHEMA_VERSION


def load_model(run: RunResult, model_dir: Path) -> ModelResult:
    """The records of one model folder that has a ``metrics.json``."""
    metrics = files.read_record(model_dir / files.METRICS, ModelMetrics)
    timing_path = model_dir / files.TIMING
    log_path = model_dir / files.TRAIN_LOG
    samples = model_dir / files.SAMPLES
    trajectory = model_dir / files.TRAJECTORY
    train_eval = model_dir / files.TRAIN_EVAL
    return ModelResult(
        name=metrics.model or model_dir.name,
        metrics=metrics,
        timing=files.read_record(timing_path, Timing) if timing_path.is_file() else None,
        train_log=files.read_train_log(log_path) if log_path.is_file() else [],
        samples=samples if samples.is_file() else None,
        run=run,
        trajectory=trajectory if trajectory.is_file() else None,
        train_eval=files.read_train_eval(train_eval) if train_eval.is_file() else [],
    )


def load_run(path: Path) -> RunResult:
    """A run directory with each of its models that has a ``metrics.json``, in run order."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"{path}: no such directory")
    status = files.read_record(path / files.STATUS, RunStatus)
    env_path = path / files.ENVIRONMENT
    env = files.read_record(env_path, Environment) if env_path.is_file() else Environment()
    version = schema_version_of(path)
    spec = files.read_spec(path / files.SPEC, version) if (path / files.SPEC).is_file() else {}
    run = RunResult(path=path, status=status, environment=env, spec=spec)
    found = [load_model(run, p.parent) for p in sorted(path.glob(f"*/{files.METRICS}"))]
    order = {name: i for i, name in enumerate(status.models)}
    found.sort(key=lambda m: (order.get(m.name, len(order)), m.name))
    run.models = {m.name: m for m in found}
    return run


def load_speed(path: Path) -> SpeedDirectory:
    """A ``bench speed`` directory, or a ``speed.json`` (or ``base.json`` ...) file."""
    path = Path(path)
    file = path / files.SPEED if path.is_dir() else path
    data = files.load_json(file)
    if not isinstance(data, dict) or data.get("kind") != "speed":
        raise StoreError(f"{path}: not a bench speed result (speed.json, kind 'speed')")
    doc = files.parse_record(data, SpeedRun, str(file))
    return SpeedDirectory(path if path.is_dir() else path.parent, doc)
