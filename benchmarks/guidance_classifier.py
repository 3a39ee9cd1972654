"""The run's guidance classifier (``[classifier]``): trained by the harness's ``Trainer``
before the models (or loaded from ``checkpoint``, or from the run's own folder when a
resumed run already trained it), checked for accuracy on held-out images, and handed to
every model whose sampling settings have a ``classifier_scale``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from genbench.benchmarks import distributed
from genbench.benchmarks.batches import batches
from genbench.benchmarks.inputs import RunInputs
from genbench.benchmarks.plan import RunPlan
from genbench.benchmarks.trainer import Trainer
from genbench.core import collectives, io
from genbench.core.errors import CheckpointError
from genbench.generators.classifier import NoisyClassifier, to_vp
from genbench.store import files
from genbench.store.records import ClassifierResult

ACCURACY_SIGMAS = (0.0, 0.5, 2.0)
"""Noise levels at which the stored accuracy is measured (0: clean images)."""
ACCURACY_IMAGES = 1000


def prepare_classifier(
    plan: RunPlan, run_dir: Path, device: torch.device, inputs: RunInputs
) -> NoisyClassifier | None:
    """The run's trained guidance classifier (None without ``[classifier]``); rank 0 writes
    ``classifier/`` (weights, ``classifier.json``, training log and states)."""
    spec = plan.classifier
    if spec is None:
        return None
    main = distributed.is_main()
    folder = run_dir / files.CLASSIFIER_DIR
    weights = folder / files.CLASSIFIER_WEIGHTS
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    shape = next(iter(plan.models.values())).data_shape
    torch.manual_seed(plan.benchmark.seed)  # the same seed gives the same classifier
    clf = NoisyClassifier(spec.config, shape, device)
    info: dict[str, Any] = {"train_steps": 0, "train_time_s": 0.0}
    source = spec.checkpoint or (weights if weights.is_file() else None)
    if source is not None:
        _load(clf, source)
        if spec.checkpoint is None:  # trained by this run before it was interrupted
            info = _trained_info(weights)
    elif spec.train.trains:
        assert inputs.train is not None  # RunInputs loads it for a classifier to train
        trainer = Trainer(clf, spec.train)
        states, log = folder / files.TRAINING, folder / files.TRAIN_LOG
        resumed = trainer.resume(states) is not None
        if main and resumed:
            files.truncate_train_log(log, trainer.step)
        elif main and log.exists():
            files.inside(run_dir, log).unlink()
        data = batches(
            inputs.train, spec.train, plan.benchmark.seed, shape.image_size, device, trainer.step
        )
        fitted = trainer.fit(data, "classifier", log, states)
        info = {"train_steps": fitted["train_steps"], "train_time_s": fitted["train_time_s"]}
    if main and source is not None and source != weights:  # the run keeps its own copy
        io.write_with_atomic(weights, lambda tmp: shutil.copyfile(source, tmp))
    elif main and source is None:
        state = {k: v.detach().contiguous().cpu() for k, v in clf.state_dict().items()}
        meta = {"config": json.dumps(spec.config.model_dump(mode="json")), **_meta(info)}
        io.write_with_atomic(weights, lambda tmp: save_file(state, str(tmp), metadata=meta))
    if main:
        held_out = inputs.held_out
        accuracy = _accuracy(clf, held_out) if held_out is not None else {}
        record = ClassifierResult(
            config=spec.config.model_dump(mode="json"),
            parameters=sum(p.numel() for p in clf.net.parameters()),
            sha256=io.file_sha256(weights),
            source=str(spec.checkpoint) if spec.checkpoint else None,
            accuracy=accuracy,
            accuracy_split="test" if accuracy else None,
            accuracy_images=min(ACCURACY_IMAGES, len(held_out)) if accuracy else 0,  # type: ignore[arg-type]
            **info,
        )
        files.write_record(folder / files.CLASSIFIER_RESULT, record)
    collectives.barrier()
    return clf


def classifier_sha256(run_dir: Path) -> str | None:
    """sha256 of the run's guidance classifier weights, if it has one."""
    path = run_dir / files.CLASSIFIER_DIR / files.CLASSIFIER_WEIGHTS
    return io.file_sha256(path) if path.is_file() else None


def _meta(info: dict[str, Any]) -> dict[str, str]:
    return {"train_info": json.dumps(info)}


def _trained_info(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta.get("train_info", "{}")) or {"train_steps": 0}


def _load(clf: NoisyClassifier, path: Path) -> None:
    try:
        state = load_file(str(path), device=str(clf.device))
        clf.load_state_dict(state)
    except (SafetensorError, OSError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a guidance classifier of this [classifier] config ({first})"
        ) from None


@torch.no_grad()
def _accuracy(clf: NoisyClassifier, images: Any) -> dict[str, float]:
    """Top-1 accuracy on the first ``ACCURACY_IMAGES`` images at each of ``ACCURACY_SIGMAS``
    (noise from a fixed seed)."""
    count = min(ACCURACY_IMAGES, len(images))
    x0 = torch.stack([images[i][0] for i in range(count)]).to(clf.device)
    labels = torch.tensor([int(images[i][1]) for i in range(count)], device=clf.device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(clf.device)
    out = {}
    for sigma in ACCURACY_SIGMAS:
        s = torch.full((count,), sigma, device=clf.device)
        level = max(sigma, clf.config.sigma_min)
        logits = clf.logits(to_vp(x0 + sigma * noise, s), level)
        out[f"{sigma:g}"] = round(float((logits.argmax(1) == labels).float().mean()), 4)
    return out
