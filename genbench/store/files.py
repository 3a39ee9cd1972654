"""Reading and writing the store's records, and the layout of run directories.

::

    runs/<name>-<UTC time>-<random>/
        spec.toml             the fully resolved spec
        environment.json      ``Environment``
        run.json              ``RunStatus``
        <model>/train_log.jsonl        ``TrainLogEntry`` lines
        <model>/train_eval.jsonl       ``TrainEvalEntry`` lines ([evaluate] every)
        <model>/checkpoint.safetensors
        <model>/samples.png
        <model>/trajectory.png  x0 predictions along sampling (diffusion models)
        <model>/timing.json   ``Timing``
        <model>/metrics.json  ``ModelMetrics``
        classifier/           the guidance classifier ([classifier]), when the spec has one
        report.md, report.html

Writes are atomic (``genbench.core.io``). Reads check the schema version: a file of an
earlier version is upgraded (``genbench.store.versions``), one of an unknown version is a
one-line ``StoreError`` naming the version, and so is a file that does not parse or does not
fit its record. Names that come from specs (run and model names) are checked before they
become paths: a name is data, never a path.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from genbench.core import io
from genbench.core.errors import Busy, StoreError
from genbench.core.io import utc_now as utc_now  # re-exported: run records are stamped with it
from genbench.store import versions
from genbench.store.records import (
    SCHEMA_VERSION,
    EvalResult,
    ModelMetrics,
    Record,
    RunStatus,
    SpeedResult,
    SpeedRun,
    Timing,
    TrainEvalEntry,
    TrainLogEntry,
)

R = TypeVar("R", bound=BaseModel)

SPEC = "spec.toml"
ENVIRONMENT = "environment.json"
STATUS = "run.json"
METRICS = "metrics.json"
TIMING = "timing.json"
TRAIN_LOG = "train_log.jsonl"
TRAIN_EVAL = "train_eval.jsonl"
CHECKPOINT = "checkpoint.safetensors"
SAMPLES = "samples.png"
TRAJECTORY = "trajectory.png"
SPEED = "speed.json"
CLASSIFIER_DIR = "classifier"
"""A run's folder of its guidance classifier (``[classifier]``): ``classifier.safetensors``,
``classifier.json`` (``ClassifierResult``), its training log and training states."""
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_RESULT = "classifier.json"
TRAINING = "training"
"""A model's folder of full training states (``state-<step>.pt``, the newest few)."""
MODEL_FILES = (TRAIN_LOG, TRAIN_EVAL, CHECKPOINT, SAMPLES, TRAJECTORY, TIMING, METRICS)
"""The files a run writes into a model's folder (and the only ones ``bench resume`` removes)."""
PARTIAL_SUFFIX = io.PARTIAL_SUFFIX

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_UPGRADES: dict[type, Callable[[dict[str, Any]], dict[str, Any]]] = {
    ModelMetrics: versions.upgrade_model_metrics,
    Timing: versions.upgrade_timing,
    SpeedResult: versions.upgrade_timing,
    SpeedRun: versions.upgrade_speed_run,
    RunStatus: versions.upgrade_run_status,
}


# --------------------------------------------------------------------------- names


def check_name(name: str, what: str) -> str:
    """``name`` when it is safe as one path component (letters, digits, ``_ . -``, not
    starting with a dot or dash, at most 128 characters), else a ``StoreError`` naming
    ``what`` (e.g. ``models.<key>``)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name.strip(".") == "":
        raise StoreError(
            f"{what}: {name!r} cannot name a results folder; use letters, digits, '_', '.' "
            "and '-' (starting with a letter or digit)"
        )
    return name


RUN_FILES = (SPEC, ENVIRONMENT, STATUS, "report.md", "report.html")
"""The files of a run directory itself: no model may be named like one."""


def check_model_name(model: str, what: str | None = None) -> str:
    """``check_name`` for a model, which also must not take a run file's name."""
    what = what or f"models.{model}"
    check_name(model, what)
    if model.lower() in RUN_FILES:
        raise StoreError(f"{what}: {model!r} is the name of a run's own file; rename the model")
    return model


def model_dir(run_dir: Path, model: str) -> Path:
    """The folder of model ``model`` inside ``run_dir`` (the name is checked first)."""
    return Path(run_dir) / check_model_name(model)


def new_run_dir(out: Path, name: str) -> Path:
    """Create ``out/<name>-<UTC timestamp>-<random>`` and return it."""
    check_name(name, "benchmark.name")
    Path(out).mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # runs started in the same second (a job array) draw again
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        run = Path(out) / f"{name}-{stamp}-{secrets.token_hex(2)}"
        try:
            run.mkdir()
        except FileExistsError:
            continue
        return run
    raise StoreError(f"{out}: no free run id for {name!r}; try again")


# --------------------------------------------------------------------------- records


def write_text(path: Path, text: str) -> Path:
    """Write a text file of a run (the resolved spec, a report) atomically."""
    return io.write_text_atomic(path, text)


def write_record(path: Path, record: Record) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (unset optional fields included, so
    every file states its whole shape)."""
    return io.write_json_atomic(path, record.model_dump(mode="json"))


def load_json(path: Path) -> Any:
    """A parsed JSON file; a one-line ``StoreError`` naming it when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: cannot read ({exc})") from None


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


def parse_record(data: Any, cls: type[R], where: str) -> R:
    """``data`` (a parsed JSON object) as a ``cls`` record, upgraded from an earlier schema
    version when needed; ``StoreError`` naming ``where`` otherwise."""
    if not isinstance(data, dict):
        raise StoreError(f"{where}: expected a JSON object, found {type(data).__name__}")
    version = versions.version_of(data)
    if not versions.readable(version):
        raise StoreError(
            f"{where}: written by results schema version {data.get('schema_version')!r}; this "
            f"genbench reads versions {versions.OLDEST} to {SCHEMA_VERSION} (upgrade genbench "
            "to read it)"
        )
    upgrade = _UPGRADES.get(cls, versions.upgrade_plain if issubclass(cls, Record) else dict)
    try:
        return cls.model_validate(upgrade(data))
    except ValidationError as exc:
        raise StoreError(f"{where}: not a valid {cls.__name__} ({_first_problem(exc)})") from None


def read_record(path: Path, cls: type[R]) -> R:
    """The ``cls`` record stored at ``path`` (see ``parse_record``)."""
    return parse_record(load_json(path), cls, str(path))


def append_line(path: Path, record: BaseModel) -> None:
    """Append ``record`` as one JSON line (a training log entry, a speed result)."""
    io.append_jsonl(path, record.model_dump(mode="json"))


def read_lines(path: Path, cls: type[R]) -> list[R]:
    """Records of a JSON-lines file; a malformed line is an error naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read ({exc})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise StoreError(f"{path}:{number}: not a JSON object; fix or delete that line")
        records.append(parse_record(data, cls, f"{path}:{number}"))
    return records


def read_spec(path: Path, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """A run's resolved ``spec.toml`` as data in the current schema's meaning (the run's
    ``version`` tells how its sampling settings were meant)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StoreError(f"{path}: cannot read ({exc})") from None
    return versions.upgrade_spec(data, version)


def read_eval(path: Path) -> EvalResult:
    """A ``bench eval`` result file."""
    return read_record(path, EvalResult)


def read_speed_history(path: Path) -> list[SpeedResult]:
    """Every result of a speed history file (JSON lines)."""
    return read_lines(path, SpeedResult)


def truncate_train_log(path: Path, step: int) -> None:
    """Keep the lines of a training log (or of ``train_eval.jsonl``) up to ``step``
    (atomically); a missing log stays missing."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
        if _line_step(line) <= step
    ]
    io.write_text_atomic(path, "".join(kept))


def _line_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a damaged line goes


def read_train_log(path: Path) -> list[TrainLogEntry]:
    return read_lines(path, TrainLogEntry)


def read_train_eval(path: Path) -> list[TrainEvalEntry]:
    return read_lines(path, TrainEvalEntry)


# --------------------------------------------------------------------------- ownership

LOCK = ".lock"


def inside(run_dir: Path, path: Path) -> Path:
    """``path`` when it lies inside ``run_dir`` (after resolving links), else a
    ``StoreError``: the store never writes or deletes anywhere else."""
    root, target = Path(run_dir).resolve(), Path(path).resolve()
    if target != root and root not in target.parents:
        raise StoreError(f"{path}: outside the run directory {run_dir}; refusing to touch it")
    return Path(path)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Own ``run_dir`` while the block runs: an exclusive ``flock`` on its ``.lock`` file,
    which also names the owner (pid and host). Another owner is a ``Busy`` error (two
    processes writing one run would interleave its files). The kernel releases the lock
    when its process ends, however it ends, so a killed run never leaves a stale lock; the
    file itself stays."""
    path = Path(run_dir) / LOCK
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below, after the block)
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise Busy(
                f"{run_dir}: {owner} is working in this run; wait for it to finish (or end "
                "it) before starting another"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing the file releases the lock
