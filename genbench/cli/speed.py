"""``bench speed`` and ``bench compare``: sampling speed, and whether HEAD is slower."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genbench.cli.options import (
    BatchSizes,
    ChannelsLast,
    Compile,
    CudaGraphs,
    Device,
    History,
    Models,
    Precision,
    RunsDir,
    SpecArg,
    Steps,
    Warmup,
    split_list,
)
from genbench.core.errors import GenbenchError

if TYPE_CHECKING:  # the real imports load torch inside the commands
    from genbench.benchmarks.plan import RunPlan
    from genbench.benchmarks.speed import SpeedSettings
    from genbench.store.records import Comparison


def _settings(
    plan: RunPlan,
    batch_sizes: str | None,
    steps: str | None,
    repeats: int | None,
    warmup: int | None,
    fast: dict[str, Any],
    auto: bool = False,
    train: bool = False,
) -> SpeedSettings:
    """The speed settings of the flags over the spec's [timing], checked for the device."""
    # Imported here: these modules load torch, which `bench --help` must not.
    from genbench.benchmarks.fastpath import FastPaths
    from genbench.benchmarks.speed import (
        SpeedSettings,
        parse_batch_sizes,
        parse_steps,
        resolved_settings,
    )
    from genbench.core.device import resolve_device

    if auto and any(v is not None for v in fast.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in fast.items() if v is not None)
        raise GenbenchError(f"--fast chooses the fast paths itself; drop {given} or --fast")
    paths = FastPaths.from_section(plan.timing).override(**fast)
    paths.check(resolve_device(plan.benchmark.device))
    return resolved_settings(
        plan,
        SpeedSettings(
            batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes else None,
            steps=parse_steps(steps) if steps else None,
            fast=paths,
            repeats=repeats,
            warmup=warmup,
            auto=auto,
            train=train,
        ),
    )


def speed_cmd(
    spec: SpecArg,
    models: Models = None,
    batch_sizes: BatchSizes = None,
    steps: Steps = None,
    device: Device = None,
    out: RunsDir = Path("runs"),
    history: History = None,
    repeats: Annotated[
        int | None, typer.Option(metavar="N", help="timed calls per case (at least 10)")
    ] = None,
    warmup: Warmup = None,
    precision: Precision = None,
    channels_last: ChannelsLast = None,
    compile: Compile = None,
    cuda_graphs: CudaGraphs = None,
    baseline: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="also time a reference: diffusers (DDPMPipeline)"),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="choose the fastest fast paths whose images match fp32 eager within "
            "tolerance, once per machine (cached, recorded)",
        ),
    ] = False,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="time one training step per model (default batch: the model's "
            "train.batch_size) against a plain PyTorch loop, instead of sampling",
        ),
    ] = False,
) -> None:
    """Time sampling of SPEC's models (untrained weights) per batch size and step setting."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    from genbench import api
    from genbench.benchmarks.baselines import check_baseline
    from genbench.benchmarks.speed import (
        DEFAULT_HISTORY,
        TRAIN_NOTE,
        WEIGHTS_NOTE,
        run_speed,
        untimed_models,
    )
    from genbench.benchmarks.speed_format import (
        fast_choices,
        format_table,
        format_train_table,
        speedups,
        train_overheads,
    )

    check_baseline(baseline)
    if train and (baseline or fast or steps):
        given = [
            n for n, v in (("--baseline", baseline), ("--fast", fast), ("--steps", steps)) if v
        ]
        raise GenbenchError(
            f"--train times training steps, which {' and '.join(given)} do not apply to; "
            "drop them or --train"
        )
    plan = api.load_spec(spec, models=split_list(models, "--models", "dcgan"), device=device)
    paths = {"precision": precision, "channels_last": channels_last, "compile": compile}
    settings = _settings(
        plan,
        batch_sizes,
        steps,
        repeats,
        warmup,
        {**paths, "cuda_graphs": cuda_graphs},
        auto=fast,
        train=train,
    )
    for name in untimed_models(plan, settings):
        typer.echo(f"speed: {name} has no steps setting; timed once at its own sampler", err=True)

    def progress(record: Any) -> None:
        what = "training" if record.task == "train" else record.generator
        if record.baseline:
            what += f", {record.baseline}"
        typer.echo(
            f"speed: {record.model} ({what}) batch {record.batch_size}: "
            f"{record.images_per_s:,.1f} images/s",
            err=True,
        )

    speed_dir, records = run_speed(
        plan, settings, out, history or DEFAULT_HISTORY, baseline=baseline, on_record=progress
    )
    if train:
        typer.echo(f"training: {TRAIN_NOTE}")
        typer.echo(format_train_table(records))
        for line in train_overheads(records):
            typer.echo(line)
    else:
        typer.echo(f"weights: {WEIGHTS_NOTE}")
        typer.echo(format_table(records))
        for line in [*fast_choices(records), *speedups(records)]:
            typer.echo(line)
    typer.echo(f"results: {speed_dir / 'speed.json'}")


def compare_cmd(
    base: Annotated[
        str | None,
        typer.Argument(
            metavar="[BASE]",
            help="speed.json (or its directory), or a git revision; default: the merge base "
            "with origin/main, or HEAD~1 on main itself",
        ),
    ] = None,
    head: Annotated[
        str | None,
        typer.Argument(
            metavar="[HEAD]",
            help="speed.json (or its directory), or a git revision; '.' (default) is the "
            "working tree",
        ),
    ] = None,
    spec: Annotated[
        str, typer.Option(metavar="SPEC", help="spec whose models are measured (revisions)")
    ] = "smoke",
    models: Models = None,
    batch_sizes: BatchSizes = None,
    steps: Steps = None,
    device: Device = None,
    repeats: Annotated[
        int | None, typer.Option(metavar="N", help="interleaved timed calls per revision (20)")
    ] = None,
    sessions: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="fresh worker pairs the repeats are spread over (4)"),
    ] = 4,
    warmup: Warmup = None,
    precision: Precision = None,
    channels_last: ChannelsLast = None,
    compile: Compile = None,
    cuda_graphs: CudaGraphs = None,
    threshold: Annotated[
        float, typer.Option(metavar="R", help="slowdown ratio that counts (0.10 = 10%)")
    ] = 0.10,
    alpha: Annotated[
        float, typer.Option(metavar="P", help="Mann-Whitney U significance level")
    ] = 0.002,
    out: RunsDir = Path("runs"),
) -> None:
    """Compare BASE with HEAD; exit 1 on a regression (slower by > threshold AND p < alpha)."""
    # Imported here: `bench --help` and `bench report` must not load torch.
    from genbench import api
    from genbench.benchmarks.compare import git, revisions, stats
    from genbench.benchmarks.spec import find_spec

    if not 0 < threshold < 10 or not 0 < alpha < 1:
        raise GenbenchError("--threshold must be in (0, 10) and --alpha in (0, 1)")
    if base is not None and head is not None and Path(base).exists() and Path(head).exists():
        base_results = revisions.load_results(Path(base))
        head_results = revisions.load_results(Path(head))
        rows, notes = stats.compare_records(base_results, head_results, threshold, alpha)
        _finish(rows, notes, threshold, alpha)
        return

    repo = git.repo_root()
    if base is None:
        base = git.default_base(repo)
        if base is None:
            typer.echo("compare: PASS, HEAD has no parent revision to compare with", err=True)
            return
        typer.echo(f"compare: base = {base[:12]} (merge base with origin/main, or HEAD~1)")
    plan = api.load_spec(spec, models=split_list(models, "--models", "dcgan"), device=device)
    fast = {"precision": precision, "channels_last": channels_last, "compile": compile}
    repeats = revisions.REPEATS if repeats is None else repeats
    settings = _settings(
        plan, batch_sizes, steps, repeats, warmup, {**fast, "cuda_graphs": cuda_graphs}
    )
    setup = {
        "spec": str(find_spec(spec).resolve()),
        "models": list(plan.models),
        "device": plan.benchmark.device,
        "batch_sizes": settings.batch_sizes,
        "steps": settings.steps,
        "fast": settings.fast.to_dict() if settings.fast else {},
        "warmup": settings.warmup,
    }
    outcome = revisions.compare_revisions(
        base,
        head or git.WORKTREE,
        setup,
        settings.repeats or revisions.REPEATS,
        threshold,
        alpha,
        log=lambda line: typer.echo(line, err=True),
        repo=repo,
        sessions=sessions,
    )
    if outcome.skipped:
        typer.echo(f"compare: PASS, nothing to compare: {outcome.skipped}")
        return
    where = revisions.write_outcome(out, outcome)
    typer.echo(f"compare: base {outcome.base[:12]} vs head {outcome.head[:12]}; results: {where}")
    _finish(outcome.rows, outcome.notes, threshold, alpha)


def _finish(rows: list[Comparison], notes: list[str], threshold: float, alpha: float) -> None:
    # Imported here like the commands' library modules (scipy and the store load on use).
    from genbench.benchmarks.compare.format import describe, format_comparisons
    from genbench.benchmarks.compare.stats import Regression

    typer.echo(format_comparisons(rows, threshold, alpha))
    for note in notes:
        typer.echo(f"note: {note}")
    bad = [r for r in rows if r.verdict == "regression"]
    if not rows:
        typer.echo("compare: PASS, no case was measured on both sides")
        return
    if bad:
        typer.echo(f"compare: FAIL, {len(bad)} of {len(rows)} cases regressed")
        raise Regression(
            f"{len(bad)} of {len(rows)} cases regressed: "
            + "; ".join(f"{describe(r.key)} ({r.ratio:.2f}x, p={r.p_value:.1g})" for r in bad)
        )
    typer.echo(f"compare: PASS, no regression in {len(rows)} cases")
