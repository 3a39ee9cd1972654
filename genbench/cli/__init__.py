"""The ``bench`` command line: thin typed commands over the library; errors become one line.

Usage errors (bad flags, bad spec keys or values, unknown names, missing files) print
``bench: error: ...`` lines and exit 2 without a traceback and without writing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from genbench.cli import evaluate as commands_eval
from genbench.cli import speed as speedcmd
from genbench.core.allocator import keep_freed_memory
from genbench.core.errors import GenbenchError, SpecError

app = typer.Typer(
    name="bench",
    help="Benchmark image generative models: train, sample, time, evaluate, report.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


DataRootOpt = Annotated[
    Path | None,
    typer.Option(metavar="DIR", help="directory holding the data set (e.g. CIFAR-10)"),
]
InceptionWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="PATH",
        help="local pt_inception-2015-12-05-6726825d.pth (else $BENCH_INCEPTION_WEIGHTS, "
        "then the torch hub cache)",
    ),
]


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SpecError("--models: give at least one model name, e.g. --models dcgan")
    return items


def _checkpoints(values: list[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values or []:
        model, sep, path = value.partition("=")
        if not sep or not model or not path:
            raise SpecError(f"--checkpoint: expected MODEL=PATH, got {value!r}")
        out[model] = Path(path)
    return out


@app.command()
def run(
    spec: Annotated[
        str, typer.Argument(metavar="SPEC", help="shipped spec name (see `bench list`) or a path")
    ],
    models: Annotated[
        str | None,
        typer.Option(metavar="A,B", help="comma-separated models of the spec (gan = dcgan)"),
    ] = None,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="directory that receives run directories")
    ] = Path("runs"),
    device: speedcmd.DeviceOpt = None,
    seed: Annotated[
        int | None, typer.Option(metavar="N", help="training seed (init and data order)")
    ] = None,
    train_steps: Annotated[
        int | None,
        typer.Option(metavar="N", help="optimiser updates per model; 0 = untrained baseline"),
    ] = None,
    num_samples: Annotated[
        int | None, typer.Option(metavar="N", help="images sampled for evaluation")
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(metavar="MODEL=PATH", help="start MODEL from a saved checkpoint (repeatable)"),
    ] = None,
    data_root: DataRootOpt = None,
    inception_weights: InceptionWeightsOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the resolved spec, write nothing")
    ] = False,
) -> None:
    """Train, sample, time and evaluate the models of SPEC; results go to OUT/<run-id>/."""
    from genbench.benchmarks.spec import Overrides, load_spec, resolve

    parsed, source = load_spec(spec)
    overrides = Overrides(
        models=_split(models),
        device=device,
        seed=seed,
        train_steps=train_steps,
        num_samples=num_samples,
        data_root=data_root,
        inception_weights=inception_weights,
        checkpoints=_checkpoints(checkpoint),
    )
    plan = resolve(parsed, source, overrides)
    from genbench.benchmarks.runner import resolve_device
    from genbench.benchmarks.runner import run as run_plan

    resolve_device(plan.benchmark.device)  # fail before anything is written
    if dry_run:
        typer.echo(plan.to_toml(), nl=False)
        return
    run_dir = run_plan(plan, out)
    typer.echo((run_dir / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"report:  {run_dir / 'report.html'} (plots and sample grids)")
    typer.echo(f"results: {run_dir}")


@app.command()
def resume(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="an interrupted run, e.g. runs/<run-id>")
    ],
    device: speedcmd.DeviceOpt = None,
    data_root: DataRootOpt = None,
    inception_weights: InceptionWeightsOpt = None,
) -> None:
    """Finish an interrupted run in place from its own resolved spec: finished models are
    kept, a model whose training had finished is evaluated from its checkpoint, the rest
    run again from the start."""
    from genbench.benchmarks.runner import read_run_status, resolve_device
    from genbench.benchmarks.runner import resume as resume_run
    from genbench.benchmarks.spec import Overrides, load_spec, resolve

    status = read_run_status(run_dir)
    if status.get("status") == "complete":
        typer.echo(f"resume: {run_dir} is already complete; nothing to do")
        return
    parsed, source = load_spec(str(run_dir / "spec.toml"))
    overrides = Overrides(device=device, data_root=data_root, inception_weights=inception_weights)
    plan = resolve(parsed, source, overrides)
    resolve_device(plan.benchmark.device)  # fail before anything is changed
    actions = resume_run(plan, run_dir)
    what = {"kept": "kept", "evaluate": "evaluated from its checkpoint", "run": "run again"}
    for name, action in actions.items():
        typer.echo(f"resume: {name}: {what[action]}")
    typer.echo((run_dir / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"report:  {run_dir / 'report.html'} (plots and sample grids)")
    typer.echo(f"results: {run_dir}")


@app.command("list")
def list_cmd() -> None:
    """List shipped specs, generators, data sets, feature extractors and metrics."""
    from genbench.benchmarks.spec import available_specs
    from genbench.data.datasets import DATASETS
    from genbench.eval.extractors import EXTRACTORS
    from genbench.eval.metrics import METRICS
    from genbench.generators import GENERATORS

    typer.echo("specs:       " + ", ".join(available_specs()))
    gens = [
        name
        + (f" (alias {', '.join(GENERATORS.aliases(name))})" if GENERATORS.aliases(name) else "")
        for name in GENERATORS.names()
    ]
    typer.echo("generators:  " + ", ".join(gens))
    typer.echo("datasets:    " + ", ".join(DATASETS.names()))
    typer.echo("extractors:  " + ", ".join(EXTRACTORS.names()))
    typer.echo("metrics:     " + ", ".join(METRICS.names()))


@app.command()
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR...",
            help="run directories (`bench run`) and/or speed directories (`bench speed`)",
        ),
    ],
    report_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="md|html|both",
            help="markdown tables, a self-contained HTML page with plots, or both",
        ),
    ] = "md",
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="a .md/.html file, or a directory that receives report.md/report.html "
            "(needed for html and both); without it markdown is printed",
        ),
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="speed history, JSON lines (default: runs/speed_history.jsonl if present)",
        ),
    ] = None,
) -> None:
    """Compare every model of RUN_DIRS: markdown tables, or an HTML page with plots."""
    from genbench.reports.report import emit_report

    typer.echo(emit_report(run_dirs, report_format, out, history), nl=False)


app.command("eval")(commands_eval.eval_cmd)
app.command("stats")(commands_eval.stats_cmd)
app.command("eval-speed")(commands_eval.eval_speed_cmd)
app.command("speed")(speedcmd.speed_cmd)
app.command("compare")(speedcmd.compare_cmd)


# Recent typer vendors its own click; accept either flavour of click's exceptions.
_EXIT = (typer.Exit, click.exceptions.Exit)
_ABORT = (typer.Abort, click.exceptions.Abort)
_USAGE = (getattr(typer, "TyperException", click.ClickException), click.ClickException)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bench`` console script."""
    keep_freed_memory()  # CPU work runs up to 1.5x faster (see genbench.core.allocator)
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="bench", standalone_mode=False)
    except _EXIT as exc:
        return getattr(exc, "exit_code", 0)
    except _ABORT:
        typer.echo("bench: aborted", err=True)
        return 130
    except _USAGE as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"bench: error: {exc.format_message()}{hint}", err=True)
        return getattr(exc, "exit_code", 2)
    except GenbenchError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"bench: error: {line}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("bench: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
