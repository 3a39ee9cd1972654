"""The ``bench speed`` and ``bench compare`` commands (registered in ``genbench.cli``).

Thin typed wrappers over ``benchmarks.speed`` and ``benchmarks.compare``; heavy imports
stay inside the functions so ``bench --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

SpecArg = Annotated[
    str, typer.Argument(metavar="SPEC", help="shipped spec name (see `bench list`) or a path")
]
ModelsOpt = Annotated[
    str | None, typer.Option(metavar="A,B", help="comma-separated models of the spec")
]
BatchOpt = Annotated[
    str | None,
    typer.Option(metavar="N,N", help="batch sizes, e.g. 64,256,1024 (default timing.batch_size)"),
]
StepsOpt = Annotated[
    str | None,
    typer.Option(metavar="S,S", help="sampler step settings, e.g. 50,ddim100 (default: spec's)"),
]
DeviceOpt = Annotated[str | None, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N")]
RepeatsOpt = Annotated[
    int | None, typer.Option(metavar="N", help="timed calls per case (at least 10)")
]
WarmupOpt = Annotated[
    int | None, typer.Option(metavar="N", help="untimed calls first (default timing.warmup)")
]
PrecisionOpt = Annotated[
    str | None, typer.Option(metavar="P", help="fp32 | tf32 | bf16 | fp16 (default: spec's)")
]
ChannelsLastOpt = Annotated[
    bool | None,
    typer.Option("--channels-last/--no-channels-last", help="NHWC weights for the networks"),
]
CompileOpt = Annotated[
    str | None,
    typer.Option(metavar="MODE", help="none | default | reduce-overhead | max-autotune"),
]
GraphsOpt = Annotated[
    bool | None,
    typer.Option("--cuda-graphs/--no-cuda-graphs", help="replay each network step from a graph"),
]


def _fast(
    spec_timing: Any,
    precision: str | None,
    channels_last: bool | None,
    compile_mode: str | None,
    cuda_graphs: bool | None,
) -> Any:
    from genbench.benchmarks.fastpath import FastPaths

    base = FastPaths.from_section(spec_timing)
    return FastPaths(
        precision=precision or base.precision,
        channels_last=base.channels_last if channels_last is None else channels_last,
        compile=compile_mode or base.compile,
        cuda_graphs=base.cuda_graphs if cuda_graphs is None else cuda_graphs,
    )


def _plan(spec: str, models: str | None, device: str | None) -> Any:
    from genbench.benchmarks.spec import Overrides, load_spec, resolve
    from genbench.cli import _split

    parsed, source = load_spec(spec)
    return resolve(parsed, source, Overrides(models=_split(models), device=device))


def _settings(
    plan: Any,
    batch_sizes: str | None,
    steps: str | None,
    repeats: int | None,
    warmup: int | None,
    fast: Any,
) -> Any:
    from genbench.benchmarks.speed import (
        SpeedSettings,
        parse_batch_sizes,
        parse_steps,
        resolved_settings,
    )

    fast.check(_device(plan))
    return resolved_settings(
        plan,
        SpeedSettings(
            batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes else None,
            steps=parse_steps(steps) if steps else None,
            fast=fast,
            repeats=repeats,
            warmup=warmup,
        ),
    )


def _device(plan: Any) -> Any:
    from genbench.benchmarks.runner import resolve_device

    return resolve_device(plan.benchmark.device)


def speed_cmd(
    spec: SpecArg,
    models: ModelsOpt = None,
    batch_sizes: BatchOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="directory that receives <speed-id>/speed.json")
    ] = Path("runs"),
    history: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="JSON-lines history (default runs/speed_history.jsonl)"),
    ] = None,
    repeats: RepeatsOpt = None,
    warmup: WarmupOpt = None,
    precision: PrecisionOpt = None,
    channels_last: ChannelsLastOpt = None,
    compile: CompileOpt = None,
    cuda_graphs: GraphsOpt = None,
    baseline: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="also time a reference: diffusers (DDPMPipeline)"),
    ] = None,
) -> None:
    """Time sampling of SPEC's models (untrained weights) per batch size and step setting."""
    from genbench.benchmarks.baselines import BASELINES
    from genbench.benchmarks.speed import (
        DEFAULT_HISTORY,
        WEIGHTS_NOTE,
        format_table,
        run_speed,
        speedups,
    )
    from genbench.core.errors import GenbenchError

    if baseline is not None and baseline not in BASELINES:
        raise GenbenchError(f"--baseline: unknown {baseline!r}; valid: {', '.join(BASELINES)}")
    plan = _plan(spec, models, device)
    fast = _fast(plan.timing, precision, channels_last, compile, cuda_graphs)
    settings = _settings(plan, batch_sizes, steps, repeats, warmup, fast)

    def progress(record: dict[str, Any]) -> None:
        typer.echo(
            f"speed: {record['model']} ({record['generator']}) batch {record['batch_size']}: "
            f"{record['images_per_s']:,.1f} images/s",
            err=True,
        )

    speed_dir, records = run_speed(
        plan, settings, out, history or DEFAULT_HISTORY, baseline=baseline, on_record=progress
    )
    typer.echo(f"weights: {WEIGHTS_NOTE}")
    typer.echo(format_table(records))
    for line in speedups(records):
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
    models: ModelsOpt = None,
    batch_sizes: BatchOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    repeats: Annotated[
        int | None, typer.Option(metavar="N", help="interleaved timed calls per revision (20)")
    ] = None,
    sessions: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="fresh worker pairs the repeats are spread over (4)"),
    ] = 4,
    warmup: WarmupOpt = None,
    precision: PrecisionOpt = None,
    channels_last: ChannelsLastOpt = None,
    compile: CompileOpt = None,
    cuda_graphs: GraphsOpt = None,
    threshold: Annotated[
        float, typer.Option(metavar="R", help="slowdown ratio that counts (0.10 = 10%)")
    ] = 0.10,
    alpha: Annotated[
        float, typer.Option(metavar="P", help="Mann-Whitney U significance level")
    ] = 0.002,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="where revision measurements are written")
    ] = Path("runs"),
) -> None:
    """Compare BASE with HEAD; exit 1 on a regression (slower by > threshold AND p < alpha)."""
    from genbench.benchmarks import compare as cmp
    from genbench.benchmarks.spec import find_spec
    from genbench.core.errors import GenbenchError

    if not 0 < threshold < 10 or not 0 < alpha < 1:
        raise GenbenchError("--threshold must be in (0, 10) and --alpha in (0, 1)")
    if base is not None and head is not None and Path(base).exists() and Path(head).exists():
        _, base_results = cmp.load_results(Path(base))
        _, head_results = cmp.load_results(Path(head))
        rows, notes = cmp.compare_records(base_results, head_results, threshold, alpha)
        _finish(rows, notes, threshold, alpha)
        return

    repo = cmp.repo_root()
    if base is None:
        base = cmp.default_base(repo)
        if base is None:
            typer.echo("compare: PASS, HEAD has no parent revision to compare with", err=True)
            return
        typer.echo(f"compare: base = {base[:12]} (merge base with origin/main, or HEAD~1)")
    plan = _plan(spec, models, device)
    fast = _fast(plan.timing, precision, channels_last, compile, cuda_graphs)
    repeats = cmp.REPEATS if repeats is None else repeats
    settings = _settings(plan, batch_sizes, steps, repeats, warmup, fast)
    setup = {
        "spec": str(find_spec(spec).resolve()),
        "models": list(plan.models),
        "device": plan.benchmark.device,
        "batch_sizes": settings.batch_sizes,
        "steps": settings.steps,
        "fast": settings.fast.to_dict(),
        "warmup": settings.warmup,
    }
    outcome = cmp.compare_revisions(
        base,
        head or cmp.WORKTREE,
        setup,
        settings.repeats,
        threshold,
        alpha,
        log=lambda line: typer.echo(line, err=True),
        repo=repo,
        sessions=sessions,
    )
    if outcome.skipped:
        typer.echo(f"compare: PASS, nothing to compare: {outcome.skipped}")
        return
    where = cmp.write_outcome(out, outcome)
    typer.echo(f"compare: base {outcome.base[:12]} vs head {outcome.head[:12]}; results: {where}")
    _finish(outcome.rows or [], outcome.notes or [], threshold, alpha)


def _finish(rows: list[Any], notes: list[str], threshold: float, alpha: float) -> None:
    from genbench.benchmarks.compare import Regression, describe, format_comparisons

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
