"""Training data: endless seeded batches of a data set at a model's resolution."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from genbench.benchmarks.plan import ResolvedModel
from genbench.generators import Batch


def to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` resized to ``size`` x ``size`` (antialiased bilinear), unchanged if they
    already are: a generator may train at another resolution than its data set's."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def batches(
    dataset: TorchDataset, model: ResolvedModel, seed: int, size: int, device: torch.device
) -> Iterator[Batch]:
    """Endless shuffled batches (seeded, reshuffled every epoch) at the model's resolution."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=model.train.batch_size,
        shuffle=True,
        drop_last=True,
        generator=gen,
        num_workers=model.train.num_workers,
        persistent_workers=model.train.num_workers > 0,
    )
    while True:
        for images, labels in loader:
            yield Batch(to_size(images.to(device), size), labels.to(device))
