"""Checkpoints: a generator's network tensors as safetensors, with what made them in the
metadata (generator, config, training info), written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from genbench.benchmarks.plan import ResolvedModel
from genbench.core import io
from genbench.core.errors import CheckpointError
from genbench.generators import Generator


def save_checkpoint(
    gen: Generator,
    path: Path,
    model: ResolvedModel,
    steps: int,
    train_info: dict[str, Any] | None = None,
) -> None:
    """Write ``gen``'s state atomically; ``train_info`` (steps, time, EMA) goes into the
    metadata so that ``bench resume`` can evaluate the checkpoint without training again."""
    state = {k: v.detach().contiguous().cpu() for k, v in gen.state_dict().items()}
    meta = {
        "generator": model.generator,
        "config": json.dumps(model.config.model_dump(mode="json")),
        "train_steps": str(steps),
    }
    if train_info is not None:
        meta["train_info"] = json.dumps(train_info)
    io.write_with_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors checkpoint; ``CheckpointError`` if it is not one."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from None


def load_checkpoint(gen: Generator, path: Path, generator: str) -> None:
    """Load ``path`` into ``gen``; a checkpoint of another generator or config is a
    one-line ``CheckpointError``."""
    meta = checkpoint_metadata(path)
    if meta.get("generator") not in (None, generator):
        raise CheckpointError(
            f"{path}: checkpoint of generator {meta['generator']!r}, not {generator!r}"
        )
    try:
        gen.load_state_dict(load_file(str(path), device=str(gen.device)))
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(
            f"{path}: does not fit this model's config ({first}); use the config it was "
            "trained with"
        ) from None


def finished_training(model: ResolvedModel, model_dir: Path) -> dict[str, Any] | None:
    """The train info of ``model_dir``'s checkpoint when it holds the finished training of
    ``model`` (written after the last update), else None."""
    path = model_dir / "checkpoint.safetensors"
    if not path.is_file():
        return None
    try:
        meta = checkpoint_metadata(path)
        info = json.loads(meta["train_info"])
    except (CheckpointError, KeyError, ValueError):
        return None  # unreadable, or from a version that did not record its training
    if meta.get("generator") != model.generator or info.get("train_steps") != (
        model.train.steps or 0
    ):
        return None
    return info
