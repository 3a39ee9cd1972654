"""Read the results store into plain records: run directories, speed directories, history.

Reports read only what ``bench run`` and ``bench speed`` wrote to disk, never live objects.
Missing optional files (a model still training, an older run without KID) leave the
corresponding fields empty; a file that exists but cannot be parsed is a usage error naming
it, because a report silently built from part of the data would mislead.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.core.errors import GenbenchError


@dataclass
class RunInfo:
    """One ``bench run`` directory: its status, environment and resolved spec."""

    path: Path
    run_id: str
    status: dict[str, Any]
    env: dict[str, Any]
    spec: dict[str, Any]

    @property
    def complete(self) -> bool:
        return self.status.get("status") == "complete"


@dataclass
class ModelResult:
    """One evaluated model of a run: the contents of ``<run>/<model>/``."""

    run: RunInfo
    name: str
    metrics: dict[str, Any]
    timing: dict[str, Any]
    train_log: list[dict[str, Any]]
    samples: Path | None

    @property
    def protocol(self) -> dict[str, Any]:
        return self.metrics.get("protocol", {})

    def metric(self, name: str) -> dict[str, Any]:
        """The stored record of one metric (``{}`` when the run did not compute it)."""
        value = self.metrics.get("metrics", {}).get(name)
        if value is None:
            value = self.metrics.get("extra", {}).get(name)
        return value if isinstance(value, dict) else {}


@dataclass
class SpeedRun:
    """One ``bench speed`` directory: ``speed.json`` with its environment and records."""

    path: Path
    speed_id: str
    environment: dict[str, Any]
    results: list[dict[str, Any]]


@dataclass
class ReportInputs:
    """Everything one report is rendered from."""

    runs: list[RunInfo] = field(default_factory=list)
    models: list[ModelResult] = field(default_factory=list)
    speed: list[SpeedRun] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    history_path: Path | None = None
    history_error: str | None = None


def read_json(path: Path) -> Any:
    """Parse a JSON file; an unreadable one is a one-line usage error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenbenchError(f"{path}: cannot read ({exc})") from None


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise GenbenchError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a malformed line is an error naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenbenchError(f"{path}: cannot read ({exc})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise GenbenchError(f"{path}:{number}: not a JSON object; fix or delete that line")
        records.append(record)
    return records


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GenbenchError(f"{path}: cannot read ({exc})") from None


def load_run(path: Path) -> tuple[RunInfo, list[ModelResult]]:
    """A run directory and each of its models that has a ``metrics.json``."""
    env_path = path / "environment.json"
    run = RunInfo(
        path=path,
        run_id=path.name,
        status=_read_object(path / "run.json"),
        env=_read_object(env_path) if env_path.is_file() else {},
        spec=_read_spec(path / "spec.toml"),
    )
    models = []
    for metrics_path in sorted(path.glob("*/metrics.json")):
        model_dir = metrics_path.parent
        timing_path = model_dir / "timing.json"
        log_path = model_dir / "train_log.jsonl"
        samples = model_dir / "samples.png"
        metrics = _read_object(metrics_path)
        models.append(
            ModelResult(
                run=run,
                name=str(metrics.get("model") or model_dir.name),
                metrics=metrics,
                timing=_read_object(timing_path) if timing_path.is_file() else {},
                train_log=read_jsonl(log_path) if log_path.is_file() else [],
                samples=samples if samples.is_file() else None,
            )
        )
    order = {name: i for i, name in enumerate(run.status.get("models", []))}
    models.sort(key=lambda m: (order.get(m.name, len(order)), m.name))
    return run, models


def load_speed(path: Path) -> SpeedRun:
    """A ``bench speed`` directory (``speed.json`` = environment + result records)."""
    data = _read_object(path / "speed.json")
    results = data.get("results", [])
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise GenbenchError(f"{path / 'speed.json'}: 'results' must be a list of objects")
    return SpeedRun(
        path=path, speed_id=path.name, environment=data.get("environment", {}), results=results
    )


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
        if (path / "run.json").is_file():
            run, models = load_run(path)
            inputs.runs.append(run)
            inputs.models.extend(models)
        elif (path / "speed.json").is_file():
            inputs.speed.append(load_speed(path))
        elif not path.exists():
            raise GenbenchError(f"{path}: no such directory")
        else:
            raise GenbenchError(
                f"{path}: not a genbench run directory (no run.json) nor a speed directory "
                "(no speed.json); pass directories made by `bench run` or `bench speed`"
            )
    if history is not None:
        inputs.history = read_jsonl(history)
        inputs.history_path = Path(history)
    return inputs
