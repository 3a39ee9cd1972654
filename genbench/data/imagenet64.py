"""Downsampled ImageNet 64x64 (``imagenet64``; Chrabaszcz, Loshchilov & Hutter 2017), the
``.npz`` batches image-net.org distributes as "Imagenet64_train" and "Imagenet64_val".

Each file holds ``data``, uint8 (N, 12288): every row one image, its 4096 red, then green,
then blue pixels, row by row (CIFAR's layout), and ``labels``, the classes 1..1000. ``train``
is ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` (1,281,167 images), ``test`` is
``val_data.npz`` (the 50,000 validation images). They are looked for in
``<data root>/imagenet64`` and the folders directly inside it (the archives unpack into
``Imagenet64_train_part1_npz/`` and the like). Labels are served 0-based, images as float32
(3, 64, 64) in [-1, 1].

The training set is 15.7 GB of pixels: an array stored uncompressed in its ``.npz`` (as
``np.savez`` writes it) is memory-mapped where it lies; a compressed one is unpacked once into
``<genbench cache>/imagenet64/`` (a shared, read-only data root stays untouched) and
memory-mapped from there. ImageNet needs a
login to download, so a missing file is an error at once, naming where to get it.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from genbench.core.cache import cache_root
from genbench.core.errors import DatasetError
from genbench.core.io import write_with_atomic
from genbench.data.datasets import (
    DATASETS,
    DatasetInfo,
    ImageDataset,
    _check_split,
    resolve_data_root,
)

FOLDER = "imagenet64"
SIDE = 64
ROW = 3 * SIDE * SIDE
FILES = {
    "train": tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)),
    "test": ("val_data.npz",),
}
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
HOME = "https://image-net.org/download-images.php (Downsampled ImageNet 64x64, npz format)"


def _local_header_size(raw: Any, offset: int) -> int:
    """Bytes of a zip member's local header at ``offset`` (its name and extra field vary)."""
    raw.seek(offset)
    header = raw.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError("bad local zip header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return 30 + name_len + extra_len


def npz_array(path: Path, key: str, cache: Path | None = None) -> np.ndarray:
    """Array ``key`` of the ``.npz`` at ``path``, read-only: memory-mapped inside the file
    when stored uncompressed, else unpacked once to ``cache/<stamp>-<file>.<key>.npy`` (the
    stamp: the file's path, size and time) and mapped
    from there (read into memory when ``cache`` is None)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"{key}.npy has .npy format version {version}")
            shape, fortran, dtype = read_header(member)
            header = member.tell() if info.compress_type == zipfile.ZIP_STORED else 0
        if info.compress_type == zipfile.ZIP_STORED and not dtype.hasobject:
            with path.open("rb") as raw:
                start = info.header_offset + _local_header_size(raw, info.header_offset)
            order = "F" if fortran else "C"
            return np.memmap(path, dtype, "r", start + header, shape, order)
        if cache is None:
            with archive.open(info) as member:
                return np.lib.format.read_array(member)
    stat = path.stat()  # one unpacked copy per file version: the same name may recur
    stamp = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    unpacked = cache / f"{stamp.hexdigest()[:16]}-{path.name}.{key}.npy"
    if not unpacked.is_file():
        cache.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with (
                zipfile.ZipFile(path) as archive,
                archive.open(f"{key}.npy") as src,
                tmp.open("wb") as dst,
            ):
                while chunk := src.read(1 << 22):
                    dst.write(chunk)

        write_with_atomic(unpacked, write)
    return np.load(unpacked, mmap_mode="r")


class NpzBatches(TorchDataset):
    """The images of several ``.npz`` batch files as one data set; the arrays are opened
    lazily in each process (a DataLoader worker maps the files itself, nothing is pickled
    but their paths)."""

    def __init__(self, files: list[Path], cache: Path) -> None:
        self.files, self.cache = files, cache
        self._data: list[np.ndarray] | None = None
        labels = [np.asarray(npz_array(f, "labels"), dtype=np.int64).reshape(-1) - 1 for f in files]
        sizes = [len(a) for a in self._arrays()]
        for path, size, part in zip(files, sizes, labels, strict=True):
            if size != len(part):
                raise DatasetError(f"{path}: {size} images but {len(part)} labels")
            if len(part) and not (part.min() >= 0 and part.max() < 1000):
                raise DatasetError(f"{path}: labels outside 1..1000")
        self.labels = np.concatenate(labels)
        self.offsets = np.cumsum([0, *sizes])

    def _arrays(self) -> list[np.ndarray]:
        if self._data is None:
            data = [npz_array(f, "data", self.cache) for f in self.files]
            for path, array in zip(self.files, data, strict=True):
                if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != ROW:
                    raise DatasetError(
                        f"{path}: data is {array.dtype} {array.shape}, not uint8 (N, {ROW}): "
                        "not a downsampled ImageNet 64x64 batch"
                    )
            self._data = data
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        row = np.array(self._arrays()[part][index - self.offsets[part]])  # a copy: writable
        x = torch.from_numpy(row).view(3, SIDE, SIDE).to(torch.float32).div_(127.5).sub_(1.0)
        return x, int(self.labels[index])


def find_files(root: Path, split: str) -> list[Path]:
    """The split's batch files under ``root / "imagenet64"`` (or one folder below it);
    ``DatasetError`` naming the first missing file."""
    base = root / FOLDER
    places = [base, *sorted(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []
    found = []
    for name in FILES[split]:
        path = next((p / name for p in places if (p / name).is_file()), None)
        if path is None:
            raise DatasetError(
                f"ImageNet 64x64 {split} file {name} not found under {base}: download it from "
                f"{HOME}, unpack it there, or pass --data-root DIR holding imagenet64/ (to "
                "evaluate against statistics instead: --reference-stats FILE.npz)"
            )
        found.append(path)
    return found


@DATASETS.register("imagenet64")
class ImageNet64(ImageDataset):
    """Downsampled ImageNet 64x64 from its ``.npz`` batches (see the module docstring)."""

    info = DatasetInfo(
        name="imagenet64",
        channels=3,
        image_size=SIDE,
        num_classes=1000,
        train_size=1_281_167,
        test_size=50_000,
        description="ImageNet 64x64, 1000 classes (downsampled .npz batches, no download)",
    )

    @classmethod
    def load(cls, split: str, root: Path | None = None, download: bool = True) -> TorchDataset:
        _check_split(split)
        root = resolve_data_root(root)
        files = find_files(root, split)
        try:
            return NpzBatches(files, cache_root() / "imagenet64")
        except DatasetError:
            raise
        except PermissionError as exc:
            raise DatasetError(
                f"imagenet64: cannot unpack a compressed batch ({exc}); point "
                "$BENCH_CACHE_DIR at a writable folder"
            ) from None
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise DatasetError(
                f"cannot read ImageNet 64x64 under {root / FOLDER} ({type(exc).__name__}: "
                f"{exc}): re-download the {split} files"
            ) from None
