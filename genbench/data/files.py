"""Image files as both the ``images`` data set and ``bench eval`` read them: which names are
images, how a zip archive's members are listed, the size limit checked on a file's header
before anything is decoded, and chunked hashing of file contents."""

from __future__ import annotations

import contextlib
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from PIL import Image

IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})
"""pytorch-fid's image file extensions (matched case-insensitively)."""
MAX_PIXELS = 4096 * 4096
"""The largest image read (width x height); a larger one is refused from its header, so a
small file that decompresses into gigabytes (a "decompression bomb") costs nothing."""
UNREADABLE = (
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    zipfile.BadZipFile,  # a zip member that fails its CRC
    RuntimeError,  # an encrypted zip member
)
"""What PIL and zipfile raise for a file that is no readable image."""
CHUNK = 1 << 20


def is_image(name: str) -> bool:
    """Whether a file name has an image extension."""
    return PurePosixPath(name).suffix[1:].lower() in IMAGE_EXTENSIONS


def zip_image_names(members: Iterable[str]) -> list[str]:
    """A zip archive's image members in name order (clean-fid's and EDM's order), without
    the ``__MACOSX/._name`` resource forks macOS adds, whatever their suffix."""
    return sorted(n for n in members if is_image(n) and not n.startswith("__MACOSX/"))


@contextlib.contextmanager
def open_image(source: Any) -> Iterator[Image.Image]:
    """PIL's lazy open of a path or file object: only the header is read until the pixels
    are asked for. PIL's own decompression-bomb warning is silenced: callers check the size
    against ``MAX_PIXELS``, a tighter bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(source)
    with img:
        yield img


def too_large(img: Image.Image) -> bool:
    """Whether an opened image has more than ``MAX_PIXELS`` pixels (from its header)."""
    return img.width * img.height > MAX_PIXELS


def hash_stream(digest: Any, fh: BinaryIO) -> None:
    """Feed a file object's bytes to ``digest`` in 1 MiB chunks."""
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
