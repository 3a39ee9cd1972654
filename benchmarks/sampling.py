"""Sampling for evaluation: images streamed by seed into the evaluator, the sample grid,
and the bits/dim bound of likelihood models on the test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torch.utils.data import Dataset as TorchDataset
from torchvision.utils import make_grid, save_image

from genbench.benchmarks import distributed
from genbench.benchmarks.batches import to_size
from genbench.benchmarks.plan import ResolvedModel
from genbench.benchmarks.upscale import Upscaler
from genbench.core import collectives, io
from genbench.core.errors import NonFinite
from genbench.core.progress import progress_bar
from genbench.eval.evaluator import Evaluator
from genbench.generators import GENERATORS, Batch, Generator, SampleSettings


def seed_list(model: ResolvedModel) -> list[int]:
    """The evaluation seeds of ``model``: ``seed_offset`` .. ``seed_offset + num_samples - 1``."""
    start = model.sample.seed_offset
    return list(range(start, start + model.sample.num_samples))


def labels_for(
    gen: Generator,
    seeds: list[int],
    labels: list[int] | None = None,
    settings: SampleSettings | None = None,
) -> torch.Tensor | None:
    """The class label of each seed for a class-conditional generator, or one guided by a
    classifier (``settings.classifier_scale``), None otherwise: ``labels[seed % len(labels)]``,
    every class in turn when ``labels`` is None."""
    guided = getattr(settings, "classifier_scale", None) is not None
    if gen.data.num_classes == 0 or not (gen.conditional or guided):
        return None
    # A label is a function of the seed, so a class-conditional image still depends only on it.
    index = torch.tensor(seeds, device=gen.device)
    if labels is None:
        return index % gen.data.num_classes
    return torch.tensor(labels, device=gen.device)[index % len(labels)]


def grid_by_class(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The grid's images rearranged to one row per class, in the order of the classes'
    first appearance, each row as long as the fullest class's (shorter rows padded with
    white); returns (images, images per row)."""
    classes = list(dict.fromkeys(labels.tolist()))
    rows = [images[labels == c] for c in classes]
    width = max(len(r) for r in rows)
    blank = torch.ones_like(images[:1])  # white in [-1, 1]
    padded = [torch.cat([r, blank.expand(width - len(r), *r.shape[1:])]) for r in rows]
    return torch.cat(padded), width


def _write_grid(
    images: torch.Tensor,
    path: Path,
    labels: torch.Tensor | None = None,
    nrow: int | None = None,
) -> None:
    """A grid PNG: one row per class when ``labels`` are given, else ``nrow`` images per
    row (default: square)."""
    if labels is not None:
        images, nrow = grid_by_class(images, labels)
    elif nrow is None:
        nrow = max(1, round(images.shape[0] ** 0.5))
    if images.shape[-1] < 64:  # enlarge small images (digits are 16 px) so the grid is legible
        factor = -(-64 // images.shape[-1])
        images = F.interpolate(images, scale_factor=factor, mode="nearest")
    grid = make_grid(images, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    io.write_with_atomic(path, lambda tmp: save_image(grid, str(tmp), format="png"))


TRAJECTORY_COLUMNS = 6
"""Noise levels shown in the trajectory strip: the noisiest, the final sample and evenly
spaced calls between."""


def write_trajectory(gen: Generator, model: ResolvedModel, path: Path) -> list[float] | None:
    """The denoising-trajectory strip of the first ``trajectory_size`` evaluation seeds: one
    row per seed, one column per noise level (the x0 predicted there, noisiest first; the
    last column is the sample itself). Returns the columns' sigmas (the last one 0), or
    None for a generator without x0 predictions (nothing is written)."""
    rows = model.sample.trajectory_size
    if rows == 0:
        return None
    seeds = seed_list(model)[:rows]
    gen.eval()
    points = gen.trajectory(
        seeds, labels_for(gen, seeds, model.sample.labels, model.settings), model.settings
    )
    if not points:
        return None
    # Heun's second call at a level repeats the next step's: one column per level.
    distinct = list({p.sigma: p for p in reversed(points)}.values())[::-1]
    last = len(distinct) - 1
    count = min(TRAJECTORY_COLUMNS, len(distinct))
    picked = sorted({round(i * last / max(count - 1, 1)) for i in range(count)})
    columns = [distinct[i] for i in picked]
    sigmas = [c.sigma for c in columns[:-1]] + [0.0]
    strip = torch.stack([c.x0.clamp(-1.0, 1.0).cpu() for c in columns], dim=1)  # (N, K, ...)
    _write_grid(strip.flatten(0, 1), path, nrow=len(columns))
    return sigmas


def _stream(
    gen: Generator,
    model: ResolvedModel,
    evaluator: Evaluator,
    seeds: list[int],
    keep: int,
    label: str | None,
    upscaler: Upscaler | None = None,
) -> tuple[float, list[torch.Tensor]]:
    """Sample ``seeds`` in batches into ``evaluator`` (this rank's share, then combined
    over every rank); returns the slowest rank's seconds and the first ``keep`` images
    (on rank 0; every rank's, gathered in seed order). ``label`` None: no progress bar
    of its own. ``upscaler``: each batch is upscaled (from the data's resolution) before
    the evaluator sees it; its time is the upscaler's, not in the returned seconds."""
    bs = model.sample.batch_size
    starts = list(range(0, len(seeds), bs))
    mine = [starts[i] for i in collectives.shard(len(starts))]
    kept: list[torch.Tensor] = []
    failure: str | None = None
    data_size = gen.data.image_size
    gen.eval()
    upscaled_before = upscaler.seconds if upscaler is not None else 0.0
    t0 = time.perf_counter()
    with progress_bar(shown=label is not None) as bar:
        count = sum(len(seeds[i : i + bs]) for i in mine)
        if label is not None and collectives.world_size() > 1:  # only rank 0's bar is shown
            label += f" (rank 0's {count} of {len(seeds)})"
        task = bar.add_task(label or "", total=count, status="")
        for i in mine:
            chunk = seeds[i : i + bs]
            images = gen.sample(
                chunk, labels_for(gen, chunk, model.sample.labels, model.settings), model.settings
            )
            # The extractor sees samples at the data set's own resolution, as it sees the
            # real images: one resize path for both sides (DCGAN trains CIFAR-10 at 64 px).
            images = to_size(images, data_size)
            if upscaler is not None:
                images = upscaler(images)
            try:
                evaluator.update(images)
            except NonFinite as exc:  # stop here, but reach the collectives below
                failure = str(exc)
                break
            if i < keep:
                kept.append(images[: keep - i].cpu())
            bar.advance(task, len(chunk))
    elapsed = time.perf_counter() - t0 - (upscaler.seconds - upscaled_before if upscaler else 0)
    failures = [f for f in collectives.gather(failure) if f is not None]
    if failures:  # every rank raises, so every rank goes on to the same next model
        raise NonFinite(failures[0])
    evaluator.all_reduce()
    kept = [t for part in collectives.gather(kept) for t in part]
    # The slowest rank's time is the run's sampling time.
    return max(collectives.gather(elapsed)), kept


def _sampled(gen: Generator, model: ResolvedModel, seeds: list[int]) -> dict[str, Any]:
    """The seed range, labels and resize of a sampling run, as its records give them."""
    out: dict[str, Any] = {"seeds": f"{seeds[0]}-{seeds[-1]}"}
    if model.sample.labels is not None:
        out["labels"] = list(model.sample.labels)
    if gen.image_size != gen.data.image_size:
        out["sample_resize"] = f"bilinear_antialias {gen.image_size}->{gen.data.image_size}"
    return out


def sample_and_evaluate(
    gen: Generator,
    model: ResolvedModel,
    evaluator: Evaluator,
    grid_path: Path,
    upscaler: Upscaler | None = None,
) -> dict[str, Any]:
    """Stream samples by seed into ``evaluator``; keep only the first few for the grid.
    Returns the sampling time, the seed range and, for a generator sampling at another
    resolution than its data set's, how its samples were resized before evaluation.

    Under several processes each rank samples a contiguous run of whole batches (the same
    batches one process would sample, so every image is bit-for-bit the same), then the
    evaluator's shards are combined (``Evaluator.all_reduce``) and rank 0 writes the grid.
    """
    seeds = seed_list(model)
    keep = model.sample.grid_size
    before = upscaler.seconds if upscaler is not None else 0.0
    stages_before = dict(gen.stage_seconds or {})
    label = f"sample {model.name}" + (f" (upscaled x{upscaler.scale})" if upscaler else "")
    seconds, grid = _stream(gen, model, evaluator, seeds, keep, label, upscaler)
    extra: dict[str, Any] = {}
    if gen.stage_seconds is not None:  # the slowest rank's, stage by stage
        extra["stage_seconds"] = {
            k: max(collectives.gather(v - stages_before.get(k, 0.0)))
            for k, v in gen.stage_seconds.items()
        }
    if upscaler is not None:
        extra["upscale"] = upscaler.describe()
        extra["upscale_seconds"] = max(collectives.gather(upscaler.seconds - before))
    if distributed.is_main():
        grid_labels = labels_for(gen, seeds[:keep], model.sample.labels, model.settings)
        _write_grid(
            torch.cat(grid)[:keep], grid_path, None if grid_labels is None else grid_labels.cpu()
        )
    return {"seconds": seconds, **_sampled(gen, model, seeds), **extra}


def evaluate_during_training(
    gen: Generator, model: ResolvedModel, evaluator: Evaluator, seeds: list[int]
) -> dict[str, Any]:
    """``[evaluate] every``: sample ``seeds`` into ``evaluator`` in the middle of training
    (every rank its share); returns the metrics and the protocol facts of the seeds. A
    non-finite sample gives ``metrics`` None and the reason in ``error`` instead of
    ending the run: the training itself is sound, and a later evaluation may be finite."""
    facts = _sampled(gen, model, seeds)
    try:
        _stream(gen, model, evaluator, seeds, 0, None)  # the training bar tells
    except NonFinite as exc:  # raised on every rank alike (see _stream)
        return {"metrics": None, "error": str(exc), **facts}
    return {"metrics": evaluator.compute(), **facts}


def has_likelihood(generator: str) -> bool:
    """Whether the registered generator overrides ``bits_per_dim``."""
    return GENERATORS.get(generator).bits_per_dim is not Generator.bits_per_dim


@torch.no_grad()
def bits_per_dim(
    gen: Generator, images: TorchDataset, count: int, batch_size: int
) -> dict[str, Any]:
    """Mean (and standard error) of the model's bits/dim bound over the first ``count``
    images of ``images`` (the test split), with a progress bar."""
    count = min(count, len(images))  # type: ignore[arg-type]
    loader = DataLoader(Subset(images, range(count)), batch_size=batch_size)
    values: list[torch.Tensor] = []
    gen.eval()
    with progress_bar() as bar:
        task = bar.add_task("bits/dim (test)", total=count, status="")
        for x, y in loader:
            x = to_size(x.to(gen.device), gen.image_size)
            labels = y.to(gen.device) if gen.conditional else None
            values.append(gen.bits_per_dim(Batch(x, labels)).double().cpu())
            bar.advance(task, len(x))
    v = torch.cat(values)
    std_err = float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan")
    return {"value": float(v.mean()), "std_err": std_err, "num_images": len(v), "split": "test"}
