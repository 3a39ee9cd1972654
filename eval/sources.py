"""Image sources for evaluation: whatever a user hands ``genbench.evaluate`` or ``bench eval``.

Each side of an evaluation may be

- a folder of images (pytorch-fid's selection: the files directly inside with an image
  extension, read with PIL as RGB) or a ``.zip`` of images (every member with an image
  extension, in name order, as clean-fid reads zips);
- a ``.npz`` of samples (``arr_0``, as guided-diffusion writes them, or a single array;
  uint8 NHWC / NCHW, or float NCHW in [-1, 1]) or of statistics (``mu``, ``sigma``, as
  pytorch-fid and TTUR write them: FID only);
- a registered data set split, ``"cifar10:train"`` (the real side's statistics are cached);
- a tensor or NumPy array of images (same layouts as a samples ``.npz``);
- a callable ``f(seeds) -> images`` (a list of ints in, images out), called on batches of
  seeds ``0 .. num_samples - 1`` (or the seeds given).

``open_source`` checks the input and returns an ``ImageSet`` (batches on demand), a
``StatsFile`` or a ``DatasetSplit``, without loading any network, so bad input fails fast.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from genbench.core.collectives import shard
from genbench.core.errors import GenbenchError
from genbench.data.datasets import DATASETS, SPLITS
from genbench.data.files import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    UNREADABLE,
    hash_stream,
    is_image,
    open_image,
    too_large,
    zip_image_names,
)

Batches = Callable[[int, int], Iterator[torch.Tensor]]
"""``batches(batch_size, num_workers)``: the images as (N, C, H, W) tensors."""


@dataclass
class ImageSet:
    """Images to evaluate: where they come from (for the protocol), how many, and a way to
    stream them in batches."""

    source: dict[str, Any]
    count: int
    batches: Batches
    label: str
    """How the input is named in results (a path, ``cifar10:train``, ``array (N, ...)``)."""
    part: Callable[[int, int], Batches] | None = None
    """``part(start, stop)``: the batches of images ``start`` .. ``stop - 1`` only (None:
    the source cannot be split, and ``shard`` streams all of it on rank 0)."""
    content: Callable[[], str] | None = None
    """``content()``: the sha256 of the bytes the images are read from (files: their names
    and bytes), the key statistics of them are cached under; None for arrays and callables,
    which are never cached."""

    def shard(self, index: int, parts: int, batch_size: int) -> tuple[Batches, int]:
        """The batches that process ``index`` of ``parts`` evaluates: a contiguous run of
        whole ``batch_size`` batches, the very batches one process would form, so every
        image goes through the extractor in the same company and gives the same features.
        Returns the batches and how many images they hold."""
        if parts == 1:
            return self.batches, self.count
        if self.part is None:
            return (self.batches, self.count) if index == 0 else (lambda bs, nw: iter(()), 0)
        mine = shard(-(-self.count // batch_size), parts, index)  # whole batches
        start, stop = mine.start * batch_size, min(self.count, mine.stop * batch_size)
        return self.part(start, stop), max(0, stop - start)


@dataclass
class StatsFile:
    """A ``.npz`` holding pytorch-fid statistics (``mu``, ``sigma``), or clean-fid's feature
    vectors (``feats``, its ``_kid.npz``)."""

    path: Path
    label: str


@dataclass
class DatasetSplit:
    """A registered data set's split, such as ``cifar10:train``."""

    dataset: str
    split: str
    label: str


Source = ImageSet | StatsFile | DatasetSplit


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        hash_stream(digest, fh)


def files_sha256(folder: Path, files: list[Path]) -> Callable[[], str]:
    """``content()`` of image files in ``folder``: each file's name relative to the folder
    and its bytes, in order (a renamed, added or edited image changes it)."""

    def content() -> str:
        digest = hashlib.sha256()
        for path in files:
            name = path.relative_to(folder).as_posix().encode()
            digest.update(len(name).to_bytes(8, "little") + name)
            digest.update(path.stat().st_size.to_bytes(8, "little"))
            _hash_file(digest, path)
        return digest.hexdigest()

    return content


def file_sha256(path: Path) -> Callable[[], str]:
    """``content()`` of one file (a zip or a samples ``.npz``): its bytes."""

    def content() -> str:
        digest = hashlib.sha256()
        _hash_file(digest, path)
        return digest.hexdigest()

    return content


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted (pytorch-fid's selection)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p.name))


def read_rgb(source: Any, name: str) -> torch.Tensor:
    """The image in ``source`` (a path or a file object) as a uint8 (3, H, W) tensor, read
    with PIL as RGB as pytorch-fid reads it; a file that is no image, is truncated or is
    larger than ``MAX_PIXELS`` is a one-line ``GenbenchError`` naming ``name``."""
    try:
        with open_image(source) as img:
            if too_large(img):
                raise GenbenchError(
                    f"{name}: {img.width} x {img.height} pixels is more than genbench reads "
                    f"({MAX_PIXELS:,} pixels); resize the images first"
                )
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except GenbenchError:
        raise
    except UNREADABLE as exc:
        raise GenbenchError(f"{name}: not a readable image ({exc})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class _ImageFiles:
    """A map-style data set of uint8 (3, H, W) tensors read with PIL as RGB, as pytorch-fid
    reads them."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_rgb(self.files[i], str(self.files[i]))


class _ZipImages:
    """The image members of a zip archive as uint8 (3, H, W) tensors; each worker process
    opens the archive itself (a ``ZipFile`` cannot be shared across processes)."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path, self.names = path, names
        self._zip: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        with self._zip.open(self.names[i]) as fh:
            return read_rgb(fh, f"{self.path}:{self.names[i]}")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "names": self.names, "_zip": None}


def _as_list(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return batch


def _same_shape_runs(images: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Stack consecutive images of equal shape (folders may mix sizes)."""
    start = 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            yield torch.stack(images[start:i])
            start = i


def _worker_message(exc: GenbenchError) -> str:
    """The one-line message of an error raised in a DataLoader worker (torch re-raises it
    with the worker's traceback folded into the message; its last line is the original)."""
    last = str(exc).strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith("genbench.") and ": " in last else last


def _loader_batches(dataset: Any) -> Batches:
    def batches(batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
        )
        try:
            for images in loader:
                yield from _same_shape_runs(images)
        except GenbenchError as exc:
            raise type(exc)(_worker_message(exc)) from None

    return batches


def check_images(array: np.ndarray | torch.Tensor, what: str) -> np.ndarray | torch.Tensor:
    """An image array or tensor in NCHW: NHWC is transposed; anything that is not uint8 or
    float in [-1, 1] with 1 or 3 channels is a one-line error naming ``what``."""
    if array.ndim != 4:
        raise GenbenchError(
            f"{what}: images must be (N, H, W, C) or (N, C, H, W), got {tuple(array.shape)}"
        )
    if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        # NHWC, as guided-diffusion saves samples and as images are usually held.
        array = (
            array.transpose(0, 3, 1, 2)
            if isinstance(array, np.ndarray)
            else array.permute(0, 3, 1, 2)
        )
    if array.shape[1] not in (1, 3):
        raise GenbenchError(f"{what}: cannot tell the channel axis of shape {tuple(array.shape)}")
    if isinstance(array, torch.Tensor):
        uint8, floating = array.dtype == torch.uint8, array.is_floating_point()
    else:
        uint8, floating = array.dtype == np.uint8, np.issubdtype(array.dtype, np.floating)
    if not uint8:
        if not floating:
            raise GenbenchError(f"{what}: images must be uint8 or float, got {array.dtype}")
        finite = torch.isfinite(array) if isinstance(array, torch.Tensor) else np.isfinite(array)
        if not bool(finite.all()):
            raise GenbenchError(f"{what}: float images hold NaN or infinite values")
        count = array.numel() if isinstance(array, torch.Tensor) else array.size
        if count and (float(array.min()) < -1 or float(array.max()) > 1):
            raise GenbenchError(f"{what}: float images must lie in [-1, 1]")
    return array


def _sample_array(path: Path) -> np.ndarray:
    """The image array of a samples ``.npz``: ``arr_0``, else its only array."""
    try:
        with np.load(path) as data:  # allow_pickle stays False: arrays, never objects
            names = data.files
            if "arr_0" in names:
                array = data["arr_0"]
            elif len(names) == 1:
                array = data[names[0]]
            else:
                raise GenbenchError(
                    f"{path}: expected mu and sigma (statistics) or arr_0 / a single array "
                    f"(samples), found {', '.join(names)}"
                )
    except (ValueError, OSError) as exc:  # object arrays, truncated files
        raise GenbenchError(f"{path}: cannot read its images ({exc})") from None
    return check_images(array, str(path))  # type: ignore[return-value]  # ndarray in, out


def _loader_part(dataset: Any) -> Callable[[int, int], Batches]:
    return lambda start, stop: _loader_batches(Subset(dataset, range(start, stop)))


def _array_part(array: np.ndarray | torch.Tensor) -> Callable[[int, int], Batches]:
    return lambda start, stop: _array_batches(array[start:stop])


def _array_batches(array: np.ndarray | torch.Tensor) -> Batches:
    def batches(batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(array), batch_size):
            chunk = array[i : i + batch_size]
            if isinstance(chunk, np.ndarray):
                chunk = torch.from_numpy(np.ascontiguousarray(chunk))
            yield chunk

    return batches


def dataset_split(text: str) -> tuple[str, str] | None:
    """``("cifar10", "train")`` for ``cifar10:train`` when that names a registered data set
    and no file of that name exists; an unknown split is an error at once."""
    name, sep, split = text.partition(":")
    if not sep or Path(text).exists() or name not in DATASETS:
        return None
    if split not in SPLITS:
        raise GenbenchError(f"{text}: unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    return DATASETS.canonical(name), split


def _open_path(text: str, what: str) -> Source:
    split = dataset_split(text)
    if split is not None:
        return DatasetSplit(*split, label=text)
    path = Path(text)
    if path.is_dir():
        files = image_files(path)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise GenbenchError(f"{what}: no image files ({exts}) in folder {path}")
        folder = _ImageFiles(files)
        return ImageSet(
            {"folder": str(path)},
            len(files),
            _loader_batches(folder),
            text,
            _loader_part(folder),
            files_sha256(path, files),
        )
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = zip_image_names(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise GenbenchError(f"{what}: cannot read {path} ({exc})") from None
        if not names:
            raise GenbenchError(f"{what}: no image files in zip archive {path}")
        archive_images = _ZipImages(path, names)
        return ImageSet(
            {"zip": str(path)},
            len(names),
            _loader_batches(archive_images),
            text,
            _loader_part(archive_images),
            file_sha256(path),
        )
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path) as data:
                names = set(data.files)
        except Exception as exc:
            raise GenbenchError(f"{what}: cannot read {path} ({exc})") from None
        if {"mu", "sigma"} <= names or names == {"feats"}:  # feats: clean-fid's _kid.npz
            return StatsFile(path, text)
        array = _sample_array(path)
        return ImageSet(
            {"path": str(path)},
            len(array),
            _array_batches(array),
            text,
            _array_part(array),
            file_sha256(path),
        )
    if not path.exists():
        name, sep, _ = text.partition(":")
        if sep and name.isidentifier():  # meant as DATASET:SPLIT, of a data set not known
            raise GenbenchError(
                f"{what}: unknown data set {name!r} in {text}; valid choices: "
                f"{', '.join(DATASETS.names())} (as DATASET:SPLIT), or an existing folder, "
                ".zip or .npz"
            )
        raise GenbenchError(
            f"{what}: {text} does not exist (nor names a data set split such as cifar10:train)"
        )
    raise GenbenchError(
        f"{what}: {text} is neither an image folder, a .zip of images nor a .npz file "
        "(samples or statistics)"
    )


def _callable_source(
    fn: Callable[[list[int]], Any], what: str, num_samples: int | None, seeds: Sequence[int] | None
) -> ImageSet:
    if seeds is None:
        if num_samples is None:
            raise GenbenchError(
                f"{what}: a generator callable needs num_samples (or seeds) to know how many "
                "images to draw"
            )
        seeds = range(num_samples)
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise GenbenchError(f"{what}: no seeds to draw images from")
    name = getattr(fn, "__qualname__", type(fn).__name__)

    def part(start: int, stop: int) -> Batches:
        return lambda batch_size, num_workers: _drawn(seed_list[start:stop], batch_size)

    def _drawn(seed_list: list[int], batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(seed_list), batch_size):
            chunk = seed_list[i : i + batch_size]
            images = fn(chunk)
            if isinstance(images, np.ndarray):
                images = torch.from_numpy(np.ascontiguousarray(images))
            if not isinstance(images, torch.Tensor) or len(images) != len(chunk):
                raise GenbenchError(
                    f"{what}: {name}(seeds) must return one image per seed as a tensor or "
                    f"array, got {type(images).__name__} for {len(chunk)} seeds"
                )
            yield check_images(images, f"{what}: {name}(seeds)")  # type: ignore[misc]

    seed_range = f"{seed_list[0]}-{seed_list[-1]}"
    return ImageSet(
        {"callable": f"{name} (seeds {seed_range})"},
        len(seed_list),
        part(0, len(seed_list)),
        f"{name}()",
        part,
    )


def open_source(
    obj: Any,
    what: str,
    *,
    num_samples: int | None = None,
    seeds: Sequence[int] | None = None,
) -> Source:
    """``obj`` as an image source (see the module docstring); a one-line ``GenbenchError``
    naming ``what`` (``"real"``, ``"FAKE"``) when it is none. ``num_samples`` / ``seeds``
    apply to a callable."""
    if isinstance(obj, str | Path):
        return _open_path(str(obj), what)
    if isinstance(obj, torch.Tensor | np.ndarray):
        array = check_images(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj, what)
        shape = "x".join(str(d) for d in array.shape)
        label = f"{type(obj).__name__} ({shape}, {array.dtype})"
        return ImageSet(
            {"array": label}, len(array), _array_batches(array), label, _array_part(array)
        )
    if callable(obj):
        return _callable_source(obj, what, num_samples, seeds)
    raise GenbenchError(
        f"{what}: cannot evaluate a {type(obj).__name__}; pass a folder, a .zip or .npz, a "
        "data set split such as 'cifar10:train', an image tensor or array, or a callable "
        "f(seeds) -> images"
    )
