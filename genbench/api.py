"""The Python API behind ``import genbench``: specs, runs and generators in one call each.

``genbench.evaluate`` (``genbench.eval.evaluate``) and ``genbench.load_run``
(``genbench.store.runs``) live in their own layers; this module holds the calls that need
the harness. The ``bench`` command line is a shell over these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from genbench.benchmarks import runner
from genbench.benchmarks.plan import Overrides, RunPlan, resolve
from genbench.benchmarks.spec import TrainSection, read_spec
from genbench.benchmarks.trainer import Trainer
from genbench.core.device import resolve_device
from genbench.core.errors import GenbenchError
from genbench.data.datasets import DATASETS
from genbench.generators import GENERATORS, DataShape, Generator, GeneratorConfig
from genbench.store.runs import RunResult, load_run, read_status, schema_version_of

DEFAULT_RUNS = Path("runs")


def load_spec(
    name_or_path: str | Path,
    *,
    models: Sequence[str] | None = None,
    device: str | None = None,
    seed: int | None = None,
    train_steps: int | None = None,
    time_budget: str | None = None,
    num_samples: int | None = None,
    data_root: str | Path | None = None,
    dataset: str | None = None,
    inception_weights: str | Path | None = None,
    checkpoints: Mapping[str, str | Path] | None = None,
    reference_stats: str | Path | None = None,
    labels: Sequence[int] | None = None,
) -> RunPlan:
    """A shipped spec (``"smoke"``, ``"cifar10"``) or a spec file, resolved with these
    overrides into the ``RunPlan`` ``run`` executes: every name, config and sampling
    setting checked. ``plan.to_toml()`` is the resolved spec."""
    spec, source = read_spec(str(name_or_path))
    overrides = Overrides(
        models=list(models) if models is not None else None,
        device=device,
        seed=seed,
        train_steps=train_steps,
        time_budget=time_budget,
        num_samples=num_samples,
        data_root=Path(data_root) if data_root is not None else None,
        dataset=dataset,
        inception_weights=Path(inception_weights) if inception_weights is not None else None,
        checkpoints={k: Path(v) for k, v in (checkpoints or {}).items()},
        reference_stats=Path(reference_stats) if reference_stats is not None else None,
        labels=list(labels) if labels is not None else None,
    )
    return resolve(spec, source, overrides)


def run(spec: RunPlan | str | Path, out: str | Path = DEFAULT_RUNS, **overrides: Any) -> RunResult:
    """Train, sample, time and evaluate every model of ``spec`` (a ``RunPlan`` from
    ``load_spec``, or a spec name or path with ``load_spec``'s keyword overrides); results
    go to ``out/<run-id>/``. Returns the run as read back from disk."""
    if isinstance(spec, RunPlan):
        if overrides:
            raise TypeError("give overrides to load_spec, or a spec name or path here")
        plan = spec
    else:
        plan = load_spec(spec, **overrides)
    return load_run(runner.run(plan, Path(out)))


def resume(
    run_dir: str | Path,
    *,
    device: str | None = None,
    data_root: str | Path | None = None,
    inception_weights: str | Path | None = None,
) -> tuple[RunResult, dict[str, str]]:
    """Finish an interrupted run in place from its own resolved spec (see
    ``genbench.benchmarks.runner.resume``). Returns the run and what was done with each
    model ("kept", "evaluate" or "run"); a complete run is returned with no actions (its
    reports are written again if they are missing)."""
    run_dir = Path(run_dir)
    if read_status(run_dir).complete:
        runner.rewrite_missing_reports(run_dir)
        return load_run(run_dir), {}
    spec, source = read_spec(str(run_dir / "spec.toml"), schema_version_of(run_dir))
    overrides = Overrides(
        device=device,
        data_root=Path(data_root) if data_root is not None else None,
        inception_weights=Path(inception_weights) if inception_weights is not None else None,
    )
    plan = resolve(spec, source, overrides)
    actions = runner.resume(plan, run_dir)
    return load_run(run_dir), actions


def build(
    generator: str,
    config: GeneratorConfig | Mapping[str, Any] | None = None,
    data: str | DataShape = "digits",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Generator:
    """A registered generator (``"ddpm"``, ``"gan"``, ...) to train and sample from Python.

    ``config``: its ``Config`` or a dict of fields (defaults: the published CIFAR-10
    setting, large; the shipped ``smoke`` spec holds tiny ones); ``data``: a registered
    data set's name or a ``DataShape``; the weights are initialised from ``seed``. Train
    it with ``trainer(gen, ...)``; sample with ``gen.sample(seeds, labels,
    gen.Settings(...))``.
    """
    cls = GENERATORS.get(generator, where="generator")
    if config is None or isinstance(config, Mapping):
        config = cls.Config.model_validate(dict(config or {}))
    if isinstance(data, str):
        info = DATASETS.get(data, where="data").describe()
        data = DataShape(info.channels, info.image_size, info.num_classes)
    if not isinstance(config, cls.Config):
        raise GenbenchError(
            f"config: {generator} takes a {cls.Config.__name__} or a dict, "
            f"not a {type(config).__name__}"
        )
    dev = resolve_device(device) if isinstance(device, str) else device
    torch.manual_seed(seed)
    return cls(config, data, dev)


def trainer(gen: Generator, **train: Any) -> Trainer:
    """The harness's ``Trainer`` for ``gen`` under ``[train]`` settings given as keywords
    (``batch_size``, ``steps``, ``grad_accum``, ``precision``, ``lr_schedule``, ...; see
    docs/spec.md). ``t.train_step(Batch(images, labels))`` is one training step on a batch
    of ``batch_size`` images, ``t.read_logs()`` the mean losses since the last call,
    ``t.save(folder)`` / ``t.resume(folder)`` the full training state."""
    from pydantic import ValidationError

    try:
        section = TrainSection.model_validate(train)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "train"
        raise GenbenchError(f"train.{where}: {err['msg']}") from None
    try:
        return Trainer(gen, section)
    except ValueError as exc:
        raise GenbenchError(str(exc)) from None
