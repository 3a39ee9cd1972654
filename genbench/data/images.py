"""Your own images as a data set (``images``): a folder, searched recursively as clean-fid
searches one, or a ``.zip`` archive in the layout EDM's ``dataset_tool.py`` writes.

The folder or archive is the data root (``--data-root PATH``, ``benchmark.data_root``). Every
file with an image extension is an image, in the order of its path relative to the root
(``00000/img00000000.png`` ...). An optional ``dataset.json`` at the root holds class labels
as EDM writes them: ``{"labels": [["00000/img00000000.png", 6], ...]}`` (or ``null``); each
image then needs exactly one label, and the number of classes is the largest label + 1.

Every image must be square and of one size (the run resizes to each model's resolution);
greyscale images give a one-channel data set, any other mode three (RGB). Both are checked
on the files' headers before anything trains, with a one-line error naming the first file
that differs. Both splits are the same images: a folder has no held-out part, so bits/dim
on ``test`` measures the training images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from genbench.core.errors import DatasetError
from genbench.data.datasets import DATASETS, DatasetInfo, ImageDataset, _check_split
from genbench.data.files import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    UNREADABLE,
    hash_stream,
    is_image,
    open_image,
    zip_image_names,
)

LABELS_FILE = "dataset.json"
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass(frozen=True)
class Listing:
    """What a folder or archive holds, checked: image names in order, labels, shape."""

    root: Path
    names: tuple[str, ...]
    labels: tuple[int, ...] | None
    channels: int
    size: int
    archive: bool

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 0


class _Files:
    """The root's members: names, bytes and headers, from a folder or a zip archive."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.archive = root.is_file()
        self._zip: zipfile.ZipFile | None = None
        if self.archive:
            try:
                self._zip = zipfile.ZipFile(root)
                members = self._zip.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"images: cannot read {root} as a zip archive ({exc})") from None
            self.names = zip_image_names(members)
            self.has_labels = LABELS_FILE in members
        else:
            found = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames if is_image(f)]
            self.names = sorted(Path(p).relative_to(root).as_posix() for p in found)
            self.has_labels = (root / LABELS_FILE).is_file()

    def open(self, name: str) -> Any:
        if self._zip is not None:
            return self._zip.open(name)
        return (self.root / name).open("rb")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _header(files: _Files, name: str) -> tuple[int, int, str]:
    """Width, height and mode from an image's header (nothing decoded)."""
    try:
        with files.open(name) as fh, open_image(fh) as img:
            return img.width, img.height, img.mode
    except UNREADABLE as exc:
        raise DatasetError(f"images: {name} is not a readable image ({exc})") from None


def _labels(files: _Files) -> tuple[int, ...] | None:
    """The labels of ``dataset.json`` in image order; None when it is absent or null."""
    if not files.has_labels:
        return None
    where = f"{files.root}{':' if files.archive else '/'}{LABELS_FILE}"
    try:
        with files.open(LABELS_FILE) as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"images: cannot read {where} ({exc})") from None
    pairs = doc.get("labels") if isinstance(doc, dict) else "missing"
    if pairs is None:
        return None
    ok = isinstance(pairs, list) and all(
        isinstance(p, list)
        and len(p) == 2
        and isinstance(p[0], str)
        and isinstance(p[1], int)
        and not isinstance(p[1], bool)
        and p[1] >= 0
        for p in pairs
    )
    if not ok:
        raise DatasetError(
            f'images: {where} must be {{"labels": [["file.png", 0], ...]}} with '
            'non-negative integer labels (EDM\'s dataset_tool layout), or hold "labels": null'
        )
    by_name = {name.replace("\\", "/"): label for name, label in pairs}
    missing = next((n for n in files.names if n not in by_name), None)
    if missing is not None:
        raise DatasetError(f"images: {missing} has no label in {where}; label every image")
    extra = next((n for n in by_name if n not in set(files.names)), None)
    if extra is not None:
        raise DatasetError(f"images: {where} labels {extra}, which is no image under the root")
    return tuple(by_name[n] for n in files.names)


_LISTINGS: dict[tuple[str, int, int], Listing] = {}


def listing(root: Path | None) -> Listing:
    """The checked contents of ``root`` (cached per path and modification time)."""
    if root is None:
        raise DatasetError(
            "dataset 'images' reads your own files: pass --data-root FOLDER or FILE.zip "
            "(benchmark.data_root in a spec)"
        )
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise DatasetError(f"images: {root} does not exist; pass an image folder or a .zip")
    if root.is_file() and root.suffix.lower() != ".zip":
        raise DatasetError(f"images: {root} is a file but no .zip archive; pass a folder or .zip")
    stat = root.stat()
    key = (str(root), stat.st_mtime_ns, stat.st_size)
    if key not in _LISTINGS:
        _LISTINGS[key] = _scan(root)
    return _LISTINGS[key]


def _scan(root: Path) -> Listing:
    files = _Files(root)
    try:
        if not files.names:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"images: no image files ({exts}) under {root}")
        labels = _labels(files)
        first = files.names[0]
        width, height, _ = _header(files, first)
        if width != height:
            raise DatasetError(
                f"images: {first} is {width}x{height}; genbench trains on square images: "
                "crop or resize them first (EDM's dataset_tool --resolution)"
            )
        if width * height > MAX_PIXELS:
            raise DatasetError(f"images: {first} is {width}x{height}, larger than genbench reads")
        grey = True
        for name in files.names:
            w, h, mode = _header(files, name)
            if (w, h) != (width, height):
                raise DatasetError(
                    f"images: {name} is {w}x{h}, but {first} is {width}x{height}; every image "
                    "must have one size: resize them first (EDM's dataset_tool --resolution)"
                )
            grey = grey and mode in _GREY_MODES
    finally:
        files.close()
    return Listing(root, tuple(files.names), labels, 1 if grey else 3, width, files.archive)


def content_sha256(entry: Listing) -> str:
    """The sha256 of the images' names and bytes (and of the labels): what reference
    statistics of this data set are cached under. Hashed once per process for files of
    unchanged size and modification time (a run asks for it several times)."""
    return _content_sha256(entry, _stamp(entry))


def _stamp(entry: Listing) -> tuple[tuple[int, int], ...]:
    """(modification time, size) of the archive, or of every image file."""
    paths = [entry.root] if entry.archive else [entry.root / name for name in entry.names]
    return tuple((st.st_mtime_ns, st.st_size) for st in (p.stat() for p in paths))


@functools.lru_cache(maxsize=8)
def _content_sha256(entry: Listing, stamp: tuple[tuple[int, int], ...]) -> str:
    digest = hashlib.sha256()
    files = _Files(entry.root)
    try:
        for name in entry.names:
            digest.update(len(name).to_bytes(8, "little") + name.encode())
            with files.open(name) as fh:
                hash_stream(digest, fh)
    finally:
        files.close()
    digest.update(json.dumps(entry.labels).encode())
    return digest.hexdigest()


class ImagesDataset(TorchDataset):
    """``(image in [-1, 1] (C, S, S) float32, label)`` pairs of a ``Listing``; label 0 when
    the images have none. Each loader worker opens a zip archive itself."""

    def __init__(self, entry: Listing) -> None:
        self.entry = entry
        self._files: _Files | None = None

    def __len__(self) -> int:
        return len(self.entry.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._files is None:
            self._files = _Files(self.entry.root)
        name = self.entry.names[i]
        mode = "L" if self.entry.channels == 1 else "RGB"
        try:
            with self._files.open(name) as fh, open_image(fh) as img:
                if img.size != (self.entry.size, self.entry.size):
                    raise DatasetError(
                        f"images: {name} changed size to {img.width}x{img.height} since the "
                        f"run started ({self.entry.size}x{self.entry.size})"
                    )
                array = np.asarray(img.convert(mode), dtype=np.uint8)
        except DatasetError:
            raise
        except UNREADABLE as exc:
            raise DatasetError(f"images: {name} is not a readable image ({exc})") from None
        hwc = torch.from_numpy(array.copy()).reshape(self.entry.size, self.entry.size, -1)
        image = hwc.permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)
        return image, self.entry.labels[i] if self.entry.labels else 0

    def __getstate__(self) -> dict[str, Any]:
        return {"entry": self.entry, "_files": None}


@DATASETS.register("images")
class Images(ImageDataset):
    """Your own images: a folder (recursive) or an EDM ``dataset_tool`` zip, with optional
    ``dataset.json`` labels; see the module docstring."""

    info = DatasetInfo(
        name="images",
        channels=0,
        image_size=0,
        num_classes=0,
        train_size=0,
        test_size=0,
        description="your images: --data-root FOLDER or FILE.zip (EDM layout, dataset.json)",
    )

    @classmethod
    def describe(cls, root: Path | None = None) -> DatasetInfo:
        entry = listing(root)
        n = len(entry.names)
        what = "zip" if entry.archive else "folder"
        return DatasetInfo(
            name="images",
            channels=entry.channels,
            image_size=entry.size,
            num_classes=entry.num_classes,
            train_size=n,
            test_size=n,
            description=f"{n} images from {what} {entry.root}",
        )

    @classmethod
    def cache_name(cls, root: Path | None = None) -> str:
        return f"images-{content_sha256(listing(root))[:16]}"

    @classmethod
    def load(cls, split: str, root: Path | None = None, download: bool = True) -> TorchDataset:
        _check_split(split)
        return ImagesDataset(listing(root))
