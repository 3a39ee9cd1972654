"""Image data sets behind one registry: ``digits`` (embedded default) and ``cifar10``.

Every data set serves ``(image, label)`` pairs with images as float32 tensors in [-1, 1],
shape (C, H, W), at the data set's native size (see ``DatasetInfo``). Resizing to a model's
resolution is the runner's job.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

from genbench.core.download import check_host_resolves, one_line, socket_timeout
from genbench.core.errors import DatasetError
from genbench.core.registry import Registry

SPLITS = ("train", "test")

#: Environment variable naming the data directory used when no root is given.
DATA_ROOT_ENV = "BENCH_DATA_ROOT"

#: Seconds any single network operation of a download may wait before it counts as failed.
DOWNLOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set, known without loading it."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    train_size: int
    test_size: int
    description: str


class ImageDataset(ABC):
    """A registered data set. Subclasses set ``info`` and implement ``load``."""

    info: ClassVar[DatasetInfo]

    @classmethod
    @abstractmethod
    def load(cls, split: str, root: Path | None = None, download: bool = True) -> TorchDataset:
        """Return the split as a torch Dataset of ``(image in [-1, 1], int label)``."""

    @classmethod
    def describe(cls, root: Path | None = None) -> DatasetInfo:
        """The facts of the data under ``root``: ``info`` for a fixed data set; a data set
        of the user's files (``images``) reads them from ``root``."""
        return cls.info

    @classmethod
    def cache_name(cls, root: Path | None = None) -> str:
        """The name reference statistics of this data set are cached under: its name, or
        for the user's files one that holds their content's hash."""
        return cls.info.name


DATASETS: Registry[type[ImageDataset]] = Registry(
    "dataset", base=ImageDataset, group="genbench.datasets"
)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")


def default_data_root() -> Path:
    """The data directory used when none is given: ``$BENCH_DATA_ROOT``, else
    ``~/.cache/genbench/data``."""
    env = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "genbench" / "data"


def resolve_data_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` as an absolute path, or ``default_data_root()`` when ``root`` is None."""
    return (default_data_root() if root is None else Path(root).expanduser()).absolute()


def _to_signed_unit(img: object) -> torch.Tensor:
    """PIL/array image, uint8 HWC -> float32 CHW tensor in [-1, 1] (x / 127.5 - 1)."""
    # A module-level function, not a lambda, so DataLoader workers can pickle the dataset.
    # np.array copies: PIL's buffer is read-only and torch warns on wrapping it.
    hwc = torch.from_numpy(np.array(img, dtype=np.uint8))
    return hwc.permute(2, 0, 1).contiguous().to(torch.float32).div_(127.5).sub_(1.0)


class DownloadedDataset(ImageDataset):
    """A data set that one of torchvision's loaders reads from a folder under the data root
    and can download there. ``load``: the folder there is opened without network (files that
    do not read are one line saying what to do); absent, it is downloaded with every network
    operation bounded by ``DOWNLOAD_TIMEOUT_S`` (any failure, Ctrl-C too, removes what the
    download left and is one line naming ``--data-root``), or refused at once with
    ``download=False``. Subclasses say where the files live and how to open them."""

    @classmethod
    @abstractmethod
    def _present(cls, root: Path) -> Path:
        """What exists once the data is under ``root`` (its folder)."""

    @classmethod
    @abstractmethod
    def _make(cls, root: Path, split: str, download: bool) -> TorchDataset:
        """torchvision's loader for ``split`` under ``root``."""

    @classmethod
    @abstractmethod
    def _url(cls) -> str:
        """A URL of the download, whose host must resolve first (fails fast offline)."""

    @classmethod
    @abstractmethod
    def _missing(cls, root: Path, why: str) -> str:
        """The error when the data is not under ``root`` and ``why`` it was not fetched."""

    @classmethod
    def _unreadable(cls, root: Path, exc: Exception) -> str:
        """The error when the files under ``root`` do not read."""
        folder = cls._present(root)
        return (
            f"{cls.info.name}: cannot read the files under {folder} ({one_line(exc)}): "
            f"delete {folder} to download it again, or pass --data-root DIR pointing at an "
            "intact copy"
        )

    @classmethod
    def _remove_partial(cls, root: Path) -> None:
        """Remove what a failed download left (the folder did not exist before: ours)."""
        shutil.rmtree(cls._present(root), ignore_errors=True)

    @classmethod
    def load(cls, split: str, root: Path | None = None, download: bool = True) -> TorchDataset:
        _check_split(split)
        root = resolve_data_root(root)
        if cls._present(root).exists():
            try:
                return cls._make(root, split, download=False)
            except DatasetError:
                raise
            except Exception as exc:  # torchvision: RuntimeError (missing), ValueError (bad)
                raise DatasetError(cls._unreadable(root, exc)) from None
        if not download:
            raise DatasetError(cls._missing(root, "download disabled"))
        try:
            with socket_timeout(DOWNLOAD_TIMEOUT_S):
                check_host_resolves(cls._url(), DOWNLOAD_TIMEOUT_S)
                return cls._make(root, split, download=True)
        except BaseException as exc:
            # BaseException too: a Ctrl-C mid-transfer must not leave half a data set.
            cls._remove_partial(root)
            if not isinstance(exc, Exception):
                raise
            raise DatasetError(cls._missing(root, f"download failed ({one_line(exc)})")) from exc


@DATASETS.register("digits")
class Digits(ImageDataset):
    """scikit-learn's bundled handwritten digits (UCI optdigits test set, 1,797 images).

    The 8x8 images (intensities 0..16) are scaled to [0, 1], upsampled bilinearly to 16x16
    (so the GAN/UNet down-sampling stacks have room) and mapped to [-1, 1]. The split is a
    fixed stratified 80/20 split (``random_state=0``): 1,437 train and 360 test images.
    """

    info = DatasetInfo(
        name="digits",
        channels=1,
        image_size=16,
        num_classes=10,
        train_size=1437,
        test_size=360,
        description="sklearn handwritten digits, 1x16x16, embedded (no download)",
    )

    @classmethod
    def tensors(cls, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split as ``(images (N, 1, 16, 16) float32 in [-1, 1], labels (N,) int64)``."""
        _check_split(split)
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        raw = load_digits()
        idx = torch.arange(len(raw.target)).numpy()
        train_idx, test_idx = train_test_split(
            idx, test_size=cls.info.test_size, random_state=0, stratify=raw.target
        )
        sel = train_idx if split == "train" else test_idx
        sel.sort()
        x = torch.from_numpy(raw.images[sel]).float().div_(16.0).unsqueeze(1)
        x = torch.nn.functional.interpolate(
            x, size=cls.info.image_size, mode="bilinear", align_corners=False
        )
        x = x.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)
        y = torch.from_numpy(raw.target[sel]).long()
        return x.contiguous(), y

    @classmethod
    def load(cls, split: str, root: Path | None = None, download: bool = True) -> TorchDataset:
        return TensorDataset(*cls.tensors(split))


_CIFAR_HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"


@DATASETS.register("cifar10")
class Cifar10(DownloadedDataset):
    """CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images in 10 classes, 50k/10k split.

    Loaded by ``torchvision.datasets.CIFAR10`` from ``<root>/cifar-10-batches-py`` (the
    "python version" of the data set), with torchvision's md5 checks on every file. Images are
    mapped from uint8 to float32 in [-1, 1] as ``x / 127.5 - 1``, shape (3, 32, 32); labels
    are ints 0..9.

    ``root=None`` means the default data directory: ``$BENCH_DATA_ROOT`` if set, else
    ``~/.cache/genbench/data``. Absent, it is downloaded (about 170 MB) as every
    ``DownloadedDataset`` is; a complete archive left by a failed extraction is kept, so the
    next attempt needs no network. Files that fail their md5 check raise ``DatasetError``
    naming the directory; they are never replaced behind the user's back. Under several
    processes, download on one rank first.
    """

    info = DatasetInfo(
        name="cifar10",
        channels=3,
        image_size=32,
        num_classes=10,
        train_size=50000,
        test_size=10000,
        description="CIFAR-10, 3x32x32, 10 classes (torchvision; downloads ~170 MB)",
    )

    @staticmethod
    def _tv() -> type:
        # Imported lazily: torchvision costs a second or so and the embedded path never needs it.
        from torchvision.datasets import CIFAR10

        return CIFAR10

    @classmethod
    def _present(cls, root: Path) -> Path:
        return root / cls._tv().base_folder

    @classmethod
    def _make(cls, root: Path, split: str, download: bool) -> TorchDataset:
        return cls._tv()(
            str(root), train=split == "train", transform=_to_signed_unit, download=download
        )

    @classmethod
    def _url(cls) -> str:
        return str(cls._tv().url)

    @classmethod
    def _missing(cls, root: Path, why: str) -> str:
        return (
            f"CIFAR-10 not found under {root} and {why}: pass --data-root DIR pointing at a "
            f"directory that contains {cls._tv().base_folder} (the python version from "
            f"{_CIFAR_HOME}), or run with network access"
        )

    @classmethod
    def _unreadable(cls, root: Path, exc: Exception) -> str:
        base = cls._present(root)
        bad = cls._first_bad_file(base)
        if bad is None:
            return f"cannot read CIFAR-10 under {base}: {one_line(exc)}"
        return (
            f"CIFAR-10 under {base} is corrupted or incomplete ({bad}): delete that directory"
            f" to download it again, or pass --data-root DIR pointing at an intact copy"
        )

    @classmethod
    def _first_bad_file(cls, base: Path) -> str | None:
        """A note on the first missing or md5-mismatched file under ``base``; None if all ok."""
        from torchvision.datasets.utils import check_integrity

        tv = cls._tv()
        expected = [*tv.train_list, *tv.test_list, [tv.meta["filename"], tv.meta["md5"]]]
        for filename, md5 in expected:
            path = base / filename
            if not path.is_file():
                return f"{filename} missing"
            if not check_integrity(str(path), md5):
                return f"md5 mismatch in {filename}"
        return None

    @classmethod
    def _remove_partial(cls, root: Path) -> None:
        from torchvision.datasets.utils import check_integrity

        super()._remove_partial(root)
        tv = cls._tv()
        archive = root / tv.filename
        # A complete archive (md5 ok) is kept: the next attempt extracts it without network.
        if archive.exists() and not check_integrity(str(archive), tv.tgz_md5):
            archive.unlink(missing_ok=True)


def dataset_info(name: str, root: Path | None = None) -> DatasetInfo:
    """Facts about the data set registered as ``name`` (no download; ``images`` reads the
    headers of the files under ``root``)."""
    return get_dataset(name).describe(root)


def get_dataset(name: str) -> type[ImageDataset]:
    """The registered data set class for ``name`` (``UnknownNameError`` listing choices)."""
    return DATASETS.get(name)
