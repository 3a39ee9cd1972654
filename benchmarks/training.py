"""The training loop of ``bench run``: ``train.steps`` updates with a progress bar, a JSONL
log and, when the spec asks, an EMA of the sampling networks."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genbench.benchmarks.ema import EMA, ema_beta
from genbench.benchmarks.plan import ResolvedModel
from genbench.benchmarks.spec import TrainSection
from genbench.core.errors import NonFinite
from genbench.core.progress import progress_bar
from genbench.generators import Batch, Generator
from genbench.store.files import append_line
from genbench.store.records import TrainLogEntry


def _beta(cfg: TrainSection, step: int) -> float:
    return ema_beta(
        batch_size=cfg.batch_size,
        step=step,
        decay=cfg.ema_decay,
        halflife_kimg=cfg.ema_halflife_kimg,
        rampup_ratio=cfg.ema_rampup_ratio,
    )


def train(
    gen: Generator, data: Iterator[Batch], model: ResolvedModel, log_path: Path
) -> dict[str, Any]:
    """Run ``model.train.steps`` updates; one log line per ``log_every`` steps (the mean
    losses over them). With an EMA configured, the sampling networks hold the averaged
    weights afterwards. Returns the train info stored with the results; a NaN or infinite
    loss stops training with ``NonFinite`` (the model diverged)."""
    cfg = model.train
    steps, every = cfg.steps or 0, cfg.log_every
    mods = gen.modules()
    ema = EMA({n: mods[n] for n in gen.sampling_modules()}) if cfg.ema else None
    sums: dict[str, float] = {}
    gen.train()
    t0 = last = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(f"train {model.name}", total=steps, status="")
        for step in range(1, steps + 1):
            losses = gen.train_step(next(data))
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad:  # diverged: log what was seen, then fail the model (never a result)
                append_line(log_path, TrainLogEntry(step=step, losses=dict(losses)))
                name, value = next(iter(bad.items()))
                raise NonFinite(f"training diverged at step {step}: {name} = {value}")
            if ema is not None:
                ema.update(_beta(cfg, step))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % every == 0 or step == steps:
                n = every if step % every == 0 else step % every
                now = time.perf_counter()
                entry = TrainLogEntry(
                    step=step,
                    time_s=round(now - t0, 4),
                    losses={k: v / n for k, v in sums.items()},
                    images_per_s=n * cfg.batch_size / max(now - last, 1e-9),
                )
                append_line(log_path, entry)
                bar.update(task, status=" ".join(f"{k}={v:.3f}" for k, v in entry.losses.items()))
                sums, last = {}, now
            bar.advance(task)
    if ema is not None:  # sample (and checkpoint) with the averaged weights from here on
        ema.copy_to_modules()
    return {
        "train_steps": steps,
        "train_time_s": time.perf_counter() - t0,
        "ema": cfg.ema_decay or (f"halflife {cfg.ema_halflife_kimg} kimg" if cfg.ema else None),
    }
