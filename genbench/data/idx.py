"""MNIST, Fashion-MNIST and EMNIST through torchvision's own loaders (``mnist``,
``fashion_mnist``, ``emnist``): the IDX files under ``<data root>/<MNIST|FashionMNIST|EMNIST>/raw``.

The 28x28 greyscale images are padded by 2 pixels of background to 1x32x32 (the usual
protocol of generative models on MNIST: power-of-two sizes for the down-sampling stacks)
and mapped to [-1, 1]. EMNIST is its ``balanced`` split (47 classes, 112,800 / 18,800
images); its images are stored transposed, and are served upright.

As with CIFAR-10: the data root is ``--data-root``, else ``$BENCH_DATA_ROOT``, else
``~/.cache/genbench/data``; absent files download there (every network operation bounded,
a failure is one line naming ``--data-root`` and the partial download removed); with
``download=False``, or offline, a missing data set is an error within seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from genbench.data.datasets import DATASETS, DatasetInfo, DownloadedDataset

PAD = 2
"""Background pixels added on each side: 28 -> 32."""


def _padded_grey(img: Any) -> torch.Tensor:
    """PIL greyscale 28x28 -> float32 (1, 32, 32) in [-1, 1], padded with background (-1)."""
    # A module-level function, not a lambda, so DataLoader workers can pickle the dataset.
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).to(torch.float32).div_(127.5).sub_(1.0)
    return torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), value=-1.0).unsqueeze(0)


def _padded_grey_upright(img: Any) -> torch.Tensor:
    """As ``_padded_grey`` for EMNIST, whose IDX files hold each image transposed."""
    return _padded_grey(img).transpose(1, 2).contiguous()


class IdxDataset(DownloadedDataset):
    """A torchvision IDX data set (subclasses set ``info``, ``folder``, ``home``)."""

    folder: ClassVar[str]
    """Where torchvision keeps it under the data root (``MNIST``)."""
    home: ClassVar[str]
    """Where to get it by hand."""
    transform: ClassVar[Any] = staticmethod(_padded_grey)

    @classmethod
    def _tv(cls) -> type:
        raise NotImplementedError

    @classmethod
    def _present(cls, root: Path) -> Path:
        return root / cls.folder

    @classmethod
    def _make(cls, root: Path, split: str, download: bool) -> TorchDataset:
        return cls._tv()(
            str(root), train=split == "train", transform=cls.transform, download=download
        )

    @classmethod
    def _url(cls) -> str:
        tv = cls._tv()
        return f"{tv.mirrors[0]}{tv.resources[0][0]}"

    @classmethod
    def _missing(cls, root: Path, why: str) -> str:
        return (
            f"{cls.info.name} not found under {root / cls.folder / 'raw'} and {why}: pass "
            f"--data-root DIR pointing at a directory that contains {cls.folder}/raw (the IDX "
            f"files from {cls.home}), or run with network access"
        )


@DATASETS.register("mnist")
class Mnist(IdxDataset):
    """MNIST (LeCun et al. 1998): 70,000 handwritten digits, 60k/10k, padded to 32x32."""

    info = DatasetInfo(
        name="mnist",
        channels=1,
        image_size=32,
        num_classes=10,
        train_size=60000,
        test_size=10000,
        description="MNIST, 1x32x32 (28 padded), 10 classes (torchvision; downloads ~12 MB)",
    )
    folder = "MNIST"
    home = "https://yann.lecun.com/exdb/mnist/"

    @classmethod
    def _tv(cls) -> type:
        from torchvision.datasets import MNIST

        return MNIST


@DATASETS.register("fashion_mnist")
class FashionMnist(IdxDataset):
    """Fashion-MNIST (Xiao et al. 2017): 70,000 clothing images in 10 classes, 60k/10k,
    padded to 32x32."""

    info = DatasetInfo(
        name="fashion_mnist",
        channels=1,
        image_size=32,
        num_classes=10,
        train_size=60000,
        test_size=10000,
        description="Fashion-MNIST, 1x32x32 (28 padded), 10 classes (downloads ~30 MB)",
    )
    folder = "FashionMNIST"
    home = "https://github.com/zalandoresearch/fashion-mnist"

    @classmethod
    def _tv(cls) -> type:
        from torchvision.datasets import FashionMNIST

        return FashionMNIST


@DATASETS.register("emnist")
class Emnist(IdxDataset):
    """EMNIST balanced (Cohen et al. 2017): 131,600 handwritten characters in 47 classes,
    112,800 / 18,800, served upright and padded to 32x32."""

    info = DatasetInfo(
        name="emnist",
        channels=1,
        image_size=32,
        num_classes=47,
        train_size=112800,
        test_size=18800,
        description="EMNIST balanced, 1x32x32 (28 padded), 47 classes (downloads ~560 MB)",
    )
    folder = "EMNIST"
    home = "https://www.nist.gov/itl/products-and-services/emnist-dataset"
    transform = staticmethod(_padded_grey_upright)
    split = "balanced"

    @classmethod
    def _tv(cls) -> type:
        from torchvision.datasets import EMNIST

        return EMNIST

    @classmethod
    def _make(cls, root: Path, split: str, download: bool) -> TorchDataset:
        return cls._tv()(
            str(root),
            split=cls.split,
            train=split == "train",
            transform=cls.transform,
            download=download,
        )

    @classmethod
    def _url(cls) -> str:
        return str(cls._tv().url)
