"""``bench run`` and ``bench resume``: train, sample, time and evaluate every model of a
resolved spec, writing the results store (``genbench.store``) as it goes.

Each stage is its own module (``build``, ``training``, ``checkpoints``, ``sampling``,
``timing``, ``inputs``); this one strings them together per model, then for the run, and
finishes an interrupted run in place. The layout of a run directory is
``genbench.store.files``'s.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from genbench.benchmarks import distributed
from genbench.benchmarks.batches import batches
from genbench.benchmarks.build import build_generator
from genbench.benchmarks.checkpoints import (
    checkpoint_provenance,
    finished_training,
    load_checkpoint,
    save_checkpoint,
)
from genbench.benchmarks.environment import fingerprint
from genbench.benchmarks.guidance_classifier import classifier_sha256, prepare_classifier
from genbench.benchmarks.inputs import RunInputs
from genbench.benchmarks.plan import ResolvedModel, RunPlan, classifier_scale
from genbench.benchmarks.sampling import (
    bits_per_dim,
    evaluate_during_training,
    has_likelihood,
    sample_and_evaluate,
    write_trajectory,
)
from genbench.benchmarks.timing import measure_speed
from genbench.benchmarks.trainer import Trainer, state_files
from genbench.core import collectives
from genbench.core.device import resolve_device
from genbench.core.errors import GenbenchError, Interrupted, NonFinite, StoreError
from genbench.generators import Generator
from genbench.generators.classifier import NoisyClassifier
from genbench.reports.report import write_run_reports
from genbench.store import files
from genbench.store.records import (
    MetricValue,
    ModelMetrics,
    Protocol,
    Resumption,
    RunStatus,
    SampleInfo,
    TrainEvalEntry,
)
from genbench.store.runs import read_status, schema_version_of

Action = str
"""What ``resume`` does with a model: "kept", "evaluate" (its finished checkpoint) or "run"."""


def run_model(
    plan: RunPlan,
    model: ResolvedModel,
    out: Path,
    device: torch.device,
    inputs: RunInputs,
    trained: dict[str, Any] | None = None,
    classifier: NoisyClassifier | None = None,
) -> ModelMetrics | None:
    """Train (or load), checkpoint, sample + evaluate, time; write the model's files.

    ``trained``: the train info of a finished checkpoint already in ``out`` (``bench
    resume``); the model is then loaded from it instead of trained again. A model whose
    training diverges or whose samples are not finite gets a ``metrics.json`` that says so
    (``failure``) and no metric: a NaN is never a result. Under several processes every
    rank calls it; rank 0 writes and returns the metrics, the others return None.
    """
    # The reference statistics first, outside the model's failure: real images that are not
    # finite are the data set's fault (a usage error), never a failed model.
    inputs.stats  # noqa: B018 (a cached property: computed once, here)
    try:
        return _run_model(plan, model, out, device, inputs, trained, classifier)
    except NonFinite as exc:
        failed = ModelMetrics(
            model=model.name,
            generator=model.generator,
            config=model.config.model_dump(mode="json"),
            dataset=plan.benchmark.dataset,
            checkpoint_source=str(model.checkpoint) if model.checkpoint else None,
            failure=str(exc),
        )
        if distributed.is_main():
            files.write_record(out / files.METRICS, failed)
            # One line now, not only in the report at the end: the other models go on.
            print(f"bench: {model.name} failed: {exc}", file=sys.stderr, flush=True)
        return failed


def _run_model(
    plan: RunPlan,
    model: ResolvedModel,
    out: Path,
    device: torch.device,
    inputs: RunInputs,
    trained: dict[str, Any] | None,
    classifier: NoisyClassifier | None,
) -> ModelMetrics | None:
    main = distributed.is_main()  # only rank 0 writes; every rank computes its share
    if main:
        out.mkdir(parents=True, exist_ok=True)
    gen = build_generator(model, plan.benchmark.seed, device)
    guided = classifier_scale(model) is not None
    if guided:
        gen.classifier = classifier
        try:  # before training: the size may come from a pretrained network or checkpoint
            gen.guidance_classifier()
        except ValueError as exc:
            raise GenbenchError(f"models.{model.name}: {exc}") from None
    ckpt = out / files.CHECKPOINT
    if trained is not None:
        load_checkpoint(gen, ckpt, model.generator)
        train_info = trained
    else:
        train_info = {"train_steps": 0, "train_time_s": 0.0, "ema": None}
        if model.train.trains:
            train_info = train_model(plan, model, gen, out, device, inputs)
        if main:
            save_checkpoint(gen, ckpt, model, train_info["train_steps"], train_info)

    upscaler = inputs.upscaler(model)
    size = None if upscaler is None else gen.data.image_size * upscaler.scale
    evaluator = inputs.evaluator(size=size)
    sampled = sample_and_evaluate(gen, model, evaluator, out / files.SAMPLES, upscaler)
    trajectory = write_trajectory(gen, model, out / files.TRAJECTORY) if main else None
    extra = {}
    if inputs.test is not None and has_likelihood(model.generator):
        # The bound's noise comes from the global RNG: seeded here, a resumed run (which
        # skipped training and its draws) gives the same bits/dim as an uninterrupted one.
        # Rank 0 computes it; every rank learns the value, so all agree on a failure.
        torch.manual_seed(plan.benchmark.seed)
        bpd = collectives.broadcast(
            bits_per_dim(gen, inputs.test, plan.evaluate.bpd_images, plan.evaluate.batch_size)
            if main
            else None
        )
        if not math.isfinite(bpd["value"]):
            raise NonFinite(f"bits/dim is {bpd['value']}: the model's likelihood bound diverged")
        extra["bits_per_dim"] = MetricValue(**bpd)
    timing = measure_speed(gen, model, plan.timing)
    if not main:
        return None
    files.write_record(out / files.TIMING, timing)
    settings = model.settings.given()
    metrics = ModelMetrics(
        model=model.name,
        generator=model.generator,
        config=model.config.model_dump(mode="json"),
        parameters=gen.num_parameters(),
        nfe=gen.nfe(model.settings),
        dataset=plan.benchmark.dataset,
        checkpoint_source=str(model.checkpoint) if model.checkpoint else None,
        **checkpoint_provenance(model),
        **train_info,
        sample=SampleInfo(
            num_samples=model.sample.num_samples,
            seeds=sampled["seeds"],
            steps=settings.get("steps"),
            guidance=settings.get("guidance"),
            labels=sampled.get("labels"),
            seconds=sampled["seconds"],
            upscale_seconds=sampled.get("upscale_seconds"),
            stage_seconds=sampled.get("stage_seconds"),
            classifier_scale=classifier_scale(model),
            classifier_sha256=classifier_sha256(out.parent) if guided else None,
            trajectory_sigmas=trajectory,
        ),
        metrics={name: MetricValue(**value) for name, value in evaluator.compute().items()},
        extra=extra,
        # The reference's protocol comes with the evaluator's; the seeds are the run's.
        protocol=Protocol.model_validate(
            {
                **evaluator.protocol(),
                "seeds": sampled["seeds"],
                "sample_resize": sampled.get("sample_resize"),
                "labels": sampled.get("labels"),
                "upscale": sampled.get("upscale"),
            }
        ),
    )
    files.write_record(out / files.METRICS, metrics)
    return metrics


def train_model(
    plan: RunPlan,
    model: ResolvedModel,
    gen: Generator,
    out: Path,
    device: torch.device,
    inputs: RunInputs,
) -> dict[str, Any]:
    """Train ``gen`` with the harness's ``Trainer``, continuing from the newest training
    state in ``out/training`` when an interrupted attempt left one; returns the train info."""
    assert inputs.train is not None  # RunInputs loads it whenever a model trains
    trainer = Trainer(gen, model.train)
    states = out / files.TRAINING
    log = out / files.TRAIN_LOG
    resumed = trainer.resume(states) is not None
    if not distributed.is_main():
        pass
    elif resumed:
        # The log goes on from the state: lines an interrupted attempt wrote after it go.
        files.truncate_train_log(log, trainer.step)
    elif log.exists():
        files.inside(out, log).unlink()
    evals = out / files.TRAIN_EVAL
    if distributed.is_main():  # entries after the resumed state go, as the log's do
        if resumed:
            files.truncate_train_log(evals, trainer.step)
        elif evals.exists():
            files.inside(out, evals).unlink()
    data = batches(
        inputs.train, model.train, plan.benchmark.seed, gen.image_size, device, start=trainer.step
    )
    every = plan.evaluate.every_steps
    evaluate = _evaluate_during_training(plan, model, gen, evals, inputs, trainer)
    return trainer.fit(
        data, model.name, log, states, every=None if every is None else (every, evaluate)
    )


def _evaluate_during_training(
    plan: RunPlan,
    model: ResolvedModel,
    gen: Generator,
    path: Path,
    inputs: RunInputs,
    trainer: Trainer,
) -> Callable[[int], str]:
    """``[evaluate] every``'s evaluation: FID of ``every_samples`` images from seeds
    ``every_seed_offset ..``, appended to ``train_eval.jsonl`` with its own protocol."""
    ev = plan.evaluate
    seeds = list(range(ev.every_seed_offset, ev.every_seed_offset + ev.every_samples))

    def evaluate(step: int) -> str:
        evaluator = inputs.evaluator(["fid"])
        result = evaluate_during_training(gen, model, evaluator, seeds)
        fid = None if result["metrics"] is None else result["metrics"]["fid"]
        if distributed.is_main():
            protocol = {**evaluator.protocol(), "seeds": result["seeds"]}
            if fid is None:  # the evaluator stopped part way: the count asked for
                protocol["num_samples"] = len(seeds)
            protocol["sample_resize"] = result.get("sample_resize")
            protocol["labels"] = result.get("labels")
            files.append_line(
                path,
                TrainEvalEntry(
                    step=step,
                    images=step * model.train.batch_size,
                    time_s=round(trainer.elapsed, 4),
                    metrics={} if fid is None else {"fid": MetricValue(**fid)},
                    protocol=Protocol.model_validate(protocol),
                    error=result.get("error"),
                ),
            )
        if fid is None:
            return f"no FID at step {step}: non-finite samples (training goes on)"
        return f"FID {fid['value']:.4g} at step {step}"

    return evaluate


@contextmanager
def working_in(run_dir: Path) -> Iterator[None]:
    """Own ``run_dir`` (``store.files.run_lock``) while the block works in it; a Ctrl-C
    becomes ``Interrupted``, which says how to finish the run."""
    with files.run_lock(run_dir):
        try:
            yield
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; resume with: bench resume {run_dir}") from None


def run(plan: RunPlan, out_dir: Path) -> Path:
    """Execute ``plan``; returns the run directory."""
    device = resolve_device(plan.benchmark.device, where="benchmark.device")
    with distributed.session(device) as device:
        inputs = RunInputs(plan, device)  # bad inputs fail before anything is written
        main = distributed.is_main()
        run_dir = collectives.broadcast(
            files.new_run_dir(out_dir, plan.benchmark.name) if main else None
        )
        status = RunStatus(
            run_id=run_dir.name,
            benchmark=plan.benchmark.name,
            status="running",
            models=list(plan.models),
            started=files.utc_now(),
        )
        with working_in(run_dir) if main else nullcontext():
            if main:
                files.write_text(run_dir / files.SPEC, plan.to_toml())
                files.write_record(run_dir / files.ENVIRONMENT, environment(device))
                files.write_record(run_dir / files.STATUS, status)
            clf = prepare_classifier(plan, run_dir, device, inputs)
            for model in plan.models.values():
                model_dir = files.model_dir(run_dir, model.name)
                run_model(plan, model, model_dir, device, inputs, classifier=clf)
            if main:
                finish_run(run_dir, status)
    return run_dir


def environment(device: torch.device) -> Any:
    """The run's environment fingerprint, with the processes it ran on."""
    launch = distributed.current()
    return fingerprint(device, collectives.world_size()).model_copy(
        update={"launcher": launch.launcher}
    )


def finish_run(run_dir: Path, status: RunStatus) -> None:
    """Write the reports (as of the complete run; the speed history lives beside it), then
    mark the run complete: a run is never complete without its reports."""
    done = status.model_copy(update={"status": "complete", "finished": files.utc_now()})
    write_run_reports(run_dir, run_dir.parent / "speed_history.jsonl", status=done)
    files.write_record(run_dir / files.STATUS, done)


def _clear_incomplete(run_dir: Path, model_dir: Path, keep_checkpoint: bool) -> None:
    """Remove what an interrupted attempt left of a model that has no valid metrics.json:
    only the files a run writes, inside the run, never anything else in the folder. The
    training states and their log stay: training continues from the newest state."""
    keep = {files.CHECKPOINT, files.TRAIN_LOG} if keep_checkpoint else {files.TRAIN_LOG}
    for name in files.MODEL_FILES:
        for path in (model_dir / name, model_dir / (name + files.PARTIAL_SUFFIX)):
            if name not in keep and path.is_file() and not path.is_symlink():
                files.inside(run_dir, path).unlink()


def _finished(model_dir: Path) -> bool:
    """Whether a model's ``metrics.json`` is there and readable (a corrupt one is not)."""
    try:
        files.read_record(model_dir / files.METRICS, ModelMetrics)
    except StoreError:
        return False
    return True


def plan_resumption(plan: RunPlan, run_dir: Path) -> tuple[dict[str, Action], dict[str, Any]]:
    """What ``resume`` will do with each model, and the train info of every finished
    checkpoint it will evaluate."""
    actions: dict[str, Action] = {}
    trained: dict[str, Any] = {}
    for name, model in plan.models.items():
        model_dir = files.model_dir(run_dir, name)
        if _finished(model_dir):
            actions[name] = "kept"
            continue
        info = finished_training(model, model_dir)
        if info is not None:
            actions[name] = "evaluate"
        elif state_files(model_dir / files.TRAINING):
            actions[name] = "continue"
        else:
            actions[name] = "run"
        if info is not None:
            trained[name] = info
    return actions, trained


def resume(plan: RunPlan, run_dir: Path) -> dict[str, Action]:
    """Finish the interrupted run ``run_dir`` in place; returns what it did with each model.

    Models with a readable metrics.json are kept untouched; a model whose training had
    finished is evaluated from its checkpoint; every other model continues training from
    its newest training state (or from the start without one): with the same seeds, data
    order and RNG states, the same result as an uninterrupted run on the same machine.
    The reports are written again at the end, then the run is marked complete.
    """
    run_dir = Path(run_dir)
    device = resolve_device(plan.benchmark.device, where="benchmark.device")
    with distributed.session(device) as device:
        main = distributed.is_main()
        # Rank 0 owns the run (a busy run is refused before any work) and decides; the
        # others follow its plan, reading the checkpoints and states it points them to.
        with working_in(run_dir) if main else nullcontext():
            inputs = RunInputs(plan, device)  # a missing data set fails before any change
            actions, trained = collectives.broadcast(
                plan_resumption(plan, run_dir) if main else None
            )
            if main:
                _start_resumption(plan, run_dir, device, actions, trained)
            collectives.barrier()  # the leftovers are gone before anyone reads the model dirs
            todo = [name for name in plan.models if actions[name] != "kept"]
            clf = prepare_classifier(plan, run_dir, device, inputs) if todo else None
            for name in todo:
                model_dir = files.model_dir(run_dir, name)
                run_model(
                    plan,
                    plan.models[name],
                    model_dir,
                    device,
                    inputs,
                    trained=trained.get(name),
                    classifier=clf,
                )
            if main:
                finish_run(run_dir, read_status(run_dir))
    return actions


def _start_resumption(
    plan: RunPlan,
    run_dir: Path,
    device: torch.device,
    actions: dict[str, Action],
    trained: dict[str, Any],
) -> None:
    """Rank 0's part of starting ``resume``: leftovers of the interrupted attempt removed,
    the resumption recorded in ``run.json``."""
    status = read_status(run_dir)
    for partial in run_dir.glob("*" + files.PARTIAL_SUFFIX):
        if partial.is_file() and not partial.is_symlink():
            partial.unlink()
    resumption = Resumption(at=files.utc_now(), environment=environment(device), actions=actions)
    status = status.model_copy(
        update={
            "status": "running",
            "benchmark": status.benchmark or plan.benchmark.name,
            "models": status.models or list(plan.models),
            "resumed": [*status.resumed, resumption],
            # run.json keeps the version the run was started under: it says how the
            # run's spec.toml is meant (model files written now carry their own).
            "schema_version": schema_version_of(run_dir),
        }
    )
    files.write_record(run_dir / files.STATUS, status)
    for name in plan.models:
        if actions[name] != "kept":
            _clear_incomplete(run_dir, files.model_dir(run_dir, name), name in trained)


def rewrite_missing_reports(run_dir: Path) -> bool:
    """For a complete run whose reports are missing (written by a version that marked the
    run complete first, then killed): write them. Returns whether it did."""
    run_dir = Path(run_dir)
    if (run_dir / "report.md").is_file() and (run_dir / "report.html").is_file():
        return False
    with working_in(run_dir):
        write_run_reports(run_dir, run_dir.parent / "speed_history.jsonl")
    return True
