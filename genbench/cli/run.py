"""``bench run``, ``bench resume`` and ``bench list``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genbench.cli.options import (
    DataRoot,
    Device,
    InceptionWeights,
    Models,
    RunsDir,
    SpecArg,
    parse_checkpoints,
    parse_labels,
    split_list,
)
from genbench.core.errors import ModelsFailed, SpecError

if TYPE_CHECKING:  # loaded inside the commands (torch): see the comments there
    from genbench.store.runs import RunResult

RESUME_ACTIONS = {
    "kept": "kept",
    "evaluate": "evaluated from its checkpoint",
    "continue": "training continued from its newest training state",
    "run": "run again",
}


def _print_run(result: RunResult) -> None:
    """The run's report and where it is; ``ModelsFailed`` (exit 1) if a model failed."""
    typer.echo((result.path / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"report:  {result.path / 'report.html'} (plots and sample grids)")
    typer.echo(f"results: {result.path}")
    if result.failed:
        reasons = "; ".join(f"{name}: {why}" for name, why in result.failed.items())
        raise ModelsFailed(
            f"{len(result.failed)} of {len(result.models)} models failed ({reasons})"
        )


def run_cmd(
    spec: SpecArg,
    models: Models = None,
    out: RunsDir = Path("runs"),
    device: Device = None,
    seed: Annotated[
        int | None, typer.Option(metavar="N", help="training seed (init and data order)")
    ] = None,
    train_steps: Annotated[
        int | None,
        typer.Option(metavar="N", help="optimiser updates per model; 0 = untrained baseline"),
    ] = None,
    time_budget: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help='train each model for this long ("20s", "30m", "2h"), for equal-compute '
            "comparisons; replaces the spec's steps (with --train-steps: whichever first)",
        ),
    ] = None,
    num_samples: Annotated[
        int | None, typer.Option(metavar="N", help="images sampled for evaluation")
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(
            metavar="A,B",
            help="class labels the class-conditional models sample, cycled over the seeds "
            "(e.g. 1,3,5); the sample grid has one row per class",
        ),
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(metavar="MODEL=PATH", help="start MODEL from a saved checkpoint (repeatable)"),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="train and evaluate on this data set instead of the spec's"
        ),
    ] = None,
    data_root: DataRoot = None,
    inception_weights: InceptionWeights = None,
    reference_stats: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="reference statistics to evaluate against (a pytorch-fid .npz, or one "
            "`bench stats` wrote) instead of the spec's",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the resolved spec, write nothing")
    ] = False,
) -> None:
    """Train, sample, time and evaluate the models of SPEC; results go to OUT/<run-id>/."""
    # Imported here: `bench --help` and `bench report` must not load torch (see cli/__init__).
    from genbench import api
    from genbench.benchmarks import distributed
    from genbench.benchmarks.spec import parse_duration
    from genbench.core.device import resolve_device

    if time_budget is not None:
        try:
            parse_duration(time_budget)
        except ValueError as exc:
            raise SpecError(f"--time-budget: {exc}") from None
    plan = api.load_spec(
        spec,
        models=split_list(models, "--models", "dcgan"),
        device=device,
        seed=seed,
        train_steps=train_steps,
        time_budget=time_budget,
        num_samples=num_samples,
        data_root=data_root,
        dataset=dataset,
        inception_weights=inception_weights,
        checkpoints=parse_checkpoints(checkpoint),
        reference_stats=reference_stats,
        labels=parse_labels(labels),
    )
    where = "--device" if device is not None else "benchmark.device"
    resolve_device(plan.benchmark.device, where)  # an unusable device fails a dry run too
    if dry_run:
        typer.echo(plan.to_toml(), nl=False)
        return
    result = api.run(plan, out)
    if distributed.is_main():  # several processes: rank 0 prints, once
        _print_run(result)


def resume_cmd(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="an interrupted run, e.g. runs/<run-id>")
    ],
    device: Device = None,
    data_root: DataRoot = None,
    inception_weights: InceptionWeights = None,
) -> None:
    """Finish an interrupted run in place from its own resolved spec: finished models are
    kept, a model whose training had finished is evaluated from its checkpoint, a model
    with a training state continues from the newest one, the rest run from the start."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    from genbench import api
    from genbench.benchmarks import distributed

    result, actions = api.resume(
        run_dir, device=device, data_root=data_root, inception_weights=inception_weights
    )
    if not distributed.is_main():  # several processes: rank 0 prints, once
        return
    if not actions:
        typer.echo(f"resume: {run_dir} is already complete; nothing to do")
        if result.failed:
            raise ModelsFailed(f"{run_dir}: models failed: {', '.join(result.failed)}")
        return
    for name, action in actions.items():
        typer.echo(f"resume: {name}: {RESUME_ACTIONS[action]}")
    _print_run(result)


def list_cmd() -> None:
    """List shipped specs, generators, data sets, feature extractors and metrics."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    from genbench.benchmarks.spec import available_specs
    from genbench.data.datasets import DATASETS
    from genbench.eval.extractors import EXTRACTORS
    from genbench.eval.metrics import METRICS
    from genbench.generators import GENERATORS

    typer.echo("specs:       " + ", ".join(available_specs()))
    for label, registry in (
        ("generators", GENERATORS),
        ("datasets", DATASETS),
        ("extractors", EXTRACTORS),
        ("metrics", METRICS),
    ):
        typer.echo(f"{label + ':':<13}" + ", ".join(_listed(registry, n) for n in registry.names()))


def _listed(registry: Any, name: str) -> str:
    """``name (alias a, b) [where it came from]``; built-ins say nothing of their origin."""
    aliases = registry.aliases(name)
    origin = registry.origin(name)
    return (
        name
        + (f" (alias {', '.join(aliases)})" if aliases else "")
        + ("" if origin == "built-in" else f" [{origin}]")
    )


def env_cmd(device: Device = "auto") -> None:
    """Print what launched this process (torchrun, mpi, slurm or single), its rank, the
    world size, the rendezvous, the backend and the device; one line per process. Under
    several processes it also joins the process group and checks an all-reduce."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    import torch

    from genbench.benchmarks import distributed
    from genbench.core import collectives
    from genbench.core.device import resolve_device

    launch = distributed.detect()
    wanted = resolve_device(device or "auto")
    with distributed.session(wanted, launch) as mine:
        info = distributed.describe(launch, mine)
        if launch.distributed:
            ones = torch.ones(1, device=mine)
            collectives.all_sum(ones)
            ok = int(ones.item()) == launch.world_size
            info["all_reduce"] = "ok" if ok else f"wrong sum {int(ones.item())}"
        line = " ".join(f"{k}={'-' if v is None else v}" for k, v in info.items())
        typer.echo(line)
