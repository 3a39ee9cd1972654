"""Test helper: train a generator for a few steps through the harness's one ``Trainer``."""

from __future__ import annotations

from typing import Any

from genbench.benchmarks.spec import TrainSection
from genbench.benchmarks.trainer import Trainer
from genbench.generators import Batch, Generator


def trainer(gen: Generator, batch_size: int, steps: int = 10**6, **train: Any) -> Trainer:
    """A ``Trainer`` for ``gen`` with the given ``[train]`` settings."""
    return Trainer(gen, TrainSection(steps=steps, batch_size=batch_size, **train))


def fit(gen: Generator, batch: Batch, steps: int = 1, **train: Any) -> dict[str, float]:
    """Train ``gen`` for ``steps`` updates on ``batch``; the logged means."""
    t = trainer(gen, len(batch), steps=steps, **train)
    for _ in range(steps):
        t.train_step(batch)
    t.restore_flags()
    return t.read_logs()
