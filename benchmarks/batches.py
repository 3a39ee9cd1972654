"""Training data: endless batches of a data set at a model's resolution, in an order that
is a function of the seed and the step alone.

Epoch e visits the data set in the order of ``torch.randperm`` drawn from a generator
seeded with (seed, e) (numpy's ``SeedSequence`` mixes the two); its full batches are steps
e * B + 1 .. (e + 1) * B, where B = len(data set) // batch_size (the last partial batch is
dropped). So a run resumed at any step, or run by any number of processes, sees the same
batches; the loader's workers only read images.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from genbench.benchmarks.spec import TrainSection
from genbench.core.errors import DatasetError
from genbench.generators import Batch


def to_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` resized to ``size`` x ``size`` (antialiased bilinear), unchanged if they
    already are: a generator may train at another resolution than its data set's."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of data set indices that epoch ``epoch`` visits."""
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> 1)
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(mixed))


class StepBatches(Sampler[list[int]]):
    """The indices of the batches of steps ``start + 1``, ``start + 2``, ... (endless)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int = 0) -> None:
        if batch_size > num_items:
            raise DatasetError(
                f"train.batch_size {batch_size} is larger than the data set ({num_items} "
                "images); use a smaller batch"
            )
        self.num_items, self.batch_size, self.seed, self.start = num_items, batch_size, seed, start
        self.per_epoch = num_items // batch_size

    def indices(self, step: int) -> list[int]:
        """The data set indices of step ``step`` (1-based)."""
        epoch, index = divmod(step - 1, self.per_epoch)
        order = epoch_order(self.num_items, self.seed, epoch)
        return order[index * self.batch_size : (index + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        epoch, index = divmod(self.start, self.per_epoch)
        while True:
            order = epoch_order(self.num_items, self.seed, epoch)
            for i in range(index, self.per_epoch):
                yield order[i * self.batch_size : (i + 1) * self.batch_size].tolist()
            epoch, index = epoch + 1, 0


def batches(
    dataset: TorchDataset,
    train: TrainSection,
    seed: int,
    size: int,
    device: torch.device,
    start: int = 0,
) -> Iterator[Batch]:
    """Endless batches of ``train.batch_size`` images at resolution ``size``, from
    the batch of step ``start + 1`` on (a resumed run passes the step it resumes at)."""
    sampler = StepBatches(len(dataset), train.batch_size, seed, start)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=train.num_workers,
        # The loader seeds its workers from this generator, never from the global RNG that
        # training draws from.
        generator=torch.Generator().manual_seed(seed),
    )
    for images, labels in loader:
        yield Batch(to_size(images.to(device), size), labels.to(device))
