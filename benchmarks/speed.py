"""``bench speed``: sampling speed per model, batch size and step setting, with a history.

Every case samples with freshly initialised (untrained) weights: sampling speed does not
depend on weight values, so no training or checkpoint is needed. Each case goes through
``timing.speed_timer`` (the timing of ``bench run``): a cold first call reported as the
time to first image, warm-up calls, ``repeats`` timed calls (CUDA events on GPU,
``perf_counter`` on CPU), median and IQR with the raw samples, the noise share, with the
requested fast paths applied. Results:

    OUT/<speed-id>/speed.json   ``SpeedRun``: the environment and every ``SpeedResult``
    HISTORY (JSON lines)        one ``SpeedResult`` per line, keyed by git commit and machine
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genbench.benchmarks.baselines import baseline_timer
from genbench.benchmarks.build import build_untrained
from genbench.benchmarks.environment import fingerprint, machine_id
from genbench.benchmarks.fastpath import FastPaths
from genbench.benchmarks.peak import against_peak, flops_per_image, machine_peak
from genbench.benchmarks.plan import ResolvedModel, RunPlan
from genbench.benchmarks.speed_format import fast_label
from genbench.benchmarks.timing import SamplingTimer, speed_timer
from genbench.benchmarks.train_speed import train_model, train_timers
from genbench.core.device import resolve_device
from genbench.core.errors import GenbenchError
from genbench.generators import Generator
from genbench.store import files
from genbench.store.records import Environment, SpeedResult, SpeedRun

WEIGHTS = "untrained"
WEIGHTS_NOTE = "untrained weights: sampling speed does not depend on the weights' values"
TRAIN_NOTE = (
    "training steps from untrained weights on one fixed random batch (no data loading), one "
    "micro-batch per update; the harness's Trainer against a plain PyTorch loop"
)
DEFAULT_HISTORY = Path("runs") / "speed_history.jsonl"
MIN_REPEATS = 10


@dataclass(frozen=True)
class SpeedCase:
    """One model at one batch size and sampling setting (``model.settings``)."""

    model: ResolvedModel
    batch_size: int

    @property
    def steps(self) -> int | str | None:
        """The case's sampler steps as set (None: the model's default)."""
        return self.model.settings.given().get("steps")

    def key(self) -> dict[str, Any]:
        """What identifies the case across revisions and result files."""
        return {"model": self.model.name, "batch_size": self.batch_size, "steps": self.steps}


@dataclass(frozen=True)
class SpeedSettings:
    """What ``bench speed`` measures besides the spec: sizes, steps, fast paths, repeats."""

    batch_sizes: list[int] | None = None
    steps: list[int | str] | None = None
    fast: FastPaths | None = None  # None: the spec's [timing] fast paths
    repeats: int | None = None  # None: the spec's timing.repeats
    warmup: int | None = None
    auto: bool = False
    """``--fast``: choose the fast paths per case (``benchmarks.autofast``)."""
    train: bool = False
    """``--train``: time one training step per model instead of sampling."""


# --------------------------------------------------------------------------- options


def parse_batch_sizes(text: str) -> list[int]:
    """``"64,256,1024"`` -> [64, 256, 1024]; anything else is a usage error."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise GenbenchError(f"--batch-sizes: expected positive integers like 64,256, got {text!r}")
    return sizes


def parse_steps(text: str) -> list[int | str]:
    """``"50,ddim100,10+15+20"`` -> [50, "ddim100", "10+15+20"]: a comma-separated list of
    step settings; integers stay integers, other settings are strings each model's
    sampler parses (``genbench.generators``)."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise GenbenchError(f"--steps: expected step settings like 50,ddim100, got {text!r}")
    return [int(v) if v.isdigit() else v for v in items]


def resolved_settings(plan: RunPlan, settings: SpeedSettings) -> SpeedSettings:
    """Fill the unset fields from the spec's [timing] section and check the repeats."""
    timing = plan.timing
    fast = settings.fast or FastPaths.from_section(timing)
    auto = settings.auto or timing.fast
    if auto and fast != FastPaths():
        which = "--fast" if settings.auto else "the spec's timing.fast = true"
        raise GenbenchError(
            f"{which} chooses the fast paths itself; drop the explicit ones "
            f"({fast_label(fast)}) or {which}"
        )
    repeats = settings.repeats if settings.repeats is not None else timing.repeats
    if repeats < MIN_REPEATS:
        raise GenbenchError(
            f"timing.repeats: bench speed needs at least {MIN_REPEATS} timed repeats for a "
            f"median and IQR worth comparing (got {repeats}); pass --repeats {MIN_REPEATS}"
        )
    warmup = settings.warmup if settings.warmup is not None else timing.warmup
    if warmup < 0:
        raise GenbenchError(f"--warmup: must be 0 or more, got {warmup}")
    return SpeedSettings(
        batch_sizes=settings.batch_sizes or [timing.batch_size],
        steps=settings.steps,
        fast=fast,
        repeats=repeats,
        warmup=warmup,
        auto=auto,
        train=settings.train,
    )


def speed_cases(plan: RunPlan, settings: SpeedSettings) -> list[SpeedCase]:
    """Every (model, steps, batch size) of the plan, untrained and without a checkpoint.

    ``settings.steps`` applies to the models whose generator has a ``steps`` setting; the
    others (DCGAN, DDGAN: one fixed sampler) are timed once. A step setting a model cannot
    take is a usage error naming both.
    """
    cases = []
    for model in plan.models.values():
        untrained = dataclasses.replace(model, checkpoint=None)
        variants = [untrained]
        if settings.steps and model.has_setting("steps"):
            variants = [
                untrained.with_settings(f"--steps {steps!r} for model {model.name!r}", steps=steps)
                for steps in settings.steps
            ]
        for variant in variants:
            cases.extend(SpeedCase(variant, b) for b in settings.batch_sizes or [])
    return cases


def untimed_models(plan: RunPlan, settings: SpeedSettings) -> list[str]:
    """The models ``--steps`` does not apply to (their generator has no steps setting)."""
    if not settings.steps:
        return []
    return [name for name, m in plan.models.items() if not m.has_setting("steps")]


def case_timing(plan: RunPlan, case: SpeedCase, settings: SpeedSettings) -> Any:
    """``plan``'s [timing] section set to ``case`` and ``settings``."""
    fast = settings.fast or FastPaths()
    return plan.timing.model_copy(
        update={
            "batch_size": case.batch_size,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            **fast.to_dict(),
            "fast": settings.auto,
        }
    )


# --------------------------------------------------------------------------- measuring


def make_record(
    case: SpeedCase,
    timing: dict[str, Any],
    env: Environment,
    *,
    generator: str,
    parameters: int,
    speed_id: str,
    baseline: str | None = None,
    task: str | None = None,
) -> SpeedResult:
    """One result: identity, fast paths, every timing figure, raw samples, provenance."""
    return SpeedResult.model_validate(
        {
            "task": task,
            "commit": env.git_commit,
            "machine": machine_id(env),
            "timestamp": files.utc_now(),
            "speed_id": speed_id,
            "model": case.model.name,
            "generator": generator,
            "baseline": baseline,
            "parameters": parameters,
            "repeats": len(timing["raw_s"]),
            **timing,
            "steps": case.steps,
            # A baseline runs its own sampler: our model's settings are not what it timed.
            "settings": None
            if baseline
            else {k: v for k, v in case.model.settings.given().items() if k != "steps"} or None,
            "weights": WEIGHTS,
        }
    )


def case_timer(
    plan: RunPlan, case: SpeedCase, settings: SpeedSettings, device: torch.device
) -> tuple[SamplingTimer, Generator]:
    """(timer, generator) for ``case``, through ``timing.speed_timer`` (not started)."""
    gen = build_untrained(case.model, plan.benchmark.seed, device, plan.classifier)
    return speed_timer(gen, case.model, case_timing(plan, case, settings)), gen


def run_speed(
    plan: RunPlan,
    settings: SpeedSettings,
    out_dir: Path,
    history: Path,
    *,
    baseline: str | None = None,
    on_record: Callable[[SpeedResult], None] | None = None,
) -> tuple[Path, list[SpeedResult]]:
    """Measure every case; write ``speed.json`` (after each case) and append the history."""
    device = resolve_device(plan.benchmark.device)
    settings = resolved_settings(plan, settings)
    (settings.fast or FastPaths()).check(device)
    cases = speed_cases(plan, settings)
    env = fingerprint(device)
    speed_dir = files.new_run_dir(out_dir, f"speed-{plan.benchmark.name}")
    doc = SpeedRun(
        spec=plan.benchmark.name,
        weights=WEIGHTS,
        note=TRAIN_NOTE if settings.train else WEIGHTS_NOTE,
        environment=env,
        complete=False,
    )
    files.write_record(speed_dir / files.SPEED, doc)
    history.parent.mkdir(parents=True, exist_ok=True)

    def keep(record: SpeedResult) -> None:
        doc.results.append(record)
        files.write_record(speed_dir / files.SPEED, doc)
        files.append_line(history, record)
        if on_record is not None:
            on_record(record)

    if settings.train:
        _time_training(plan, settings, device, env, speed_dir.name, keep)
        cases = []
    else:
        peaks = machine_peak(device, machine_id(env))
    for case in cases:
        measured = None
        if baseline is not None:
            measured = baseline_timer(baseline, plan, case.model, case.batch_size, device)
        gen = build_untrained(case.model, plan.benchmark.seed, device, plan.classifier)
        flops = flops_per_image(gen, case.model)  # eager: before the fast paths change gen
        timer = speed_timer(gen, case.model, case_timing(plan, case, settings))
        timers = [timer] if measured is None else [measured[0], timer]
        for t in timers:
            t.start(settings.warmup or 0)
        # With a baseline, the two alternate call by call (A B, then B A) so that machine
        # drift lands on both sides of the ratio instead of on whichever went second.
        for r in range(settings.repeats or MIN_REPEATS):
            for t in timers if r % 2 == 0 else timers[::-1]:
                t.repeat(1)
        if measured is not None:
            base_timer, name, params = measured
            base = base_timer.result(noise=False).to_dict()
            # The same network and steps: the same FLOPs per image.
            base |= against_peak(flops, base["images_per_s"], base.get("precision"), peaks)
            keep(
                make_record(
                    case,
                    base,
                    env,
                    generator=name,
                    parameters=params,
                    speed_id=speed_dir.name,
                    baseline=baseline,
                )
            )
        ours = timer.result().to_dict()
        ours |= against_peak(flops, ours["images_per_s"], ours.get("precision"), peaks)
        keep(
            make_record(
                case,
                ours,
                env,
                generator=case.model.generator,
                parameters=gen.num_parameters(),
                speed_id=speed_dir.name,
            )
        )
        del gen, timers, measured
    doc.complete = True
    files.write_record(speed_dir / files.SPEED, doc)
    return speed_dir, doc.results


def _time_training(
    plan: RunPlan,
    settings: SpeedSettings,
    device: torch.device,
    env: Environment,
    speed_id: str,
    keep: Callable[[SpeedResult], None],
) -> None:
    """``--train``: per model and batch size, the harness's training step against a plain
    loop (``benchmarks.train_speed``), interleaved call by call; plain loop first."""
    for model in plan.models.values():
        model = train_model(model)
        for batch_size in settings.batch_sizes or [model.train.batch_size]:
            case = SpeedCase(model, batch_size)
            timers = train_timers(model, batch_size, plan.benchmark.seed, device)
            for _, t, _ in timers:
                t.start(max(settings.warmup or 0, 2))  # the optimisers' state is made at first
            for r in range(settings.repeats or MIN_REPEATS):
                for _, t, _ in timers if r % 2 == 0 else timers[::-1]:
                    t.repeat(1)
            for loop, t, params in timers[::-1]:
                keep(
                    make_record(
                        case,
                        t.result(noise=False).to_dict(),
                        env,
                        generator=model.generator,
                        parameters=params,
                        speed_id=speed_id,
                        baseline=None if loop == "harness" else "plain",
                        task="train",
                    )
                )
            del timers
