"""CelebA 64 through torchvision's loader, on small files the tests write in its layout
(aligned 178x218 JPEGs and the five annotation lists): the 140 px centre crop, the official
splits, the missing and corrupted cases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CelebA

from genbench.core.errors import DatasetError
from genbench.data.datasets import DATASETS

N = 6
PARTITION = [0, 0, 0, 2, 2, 1]  # train x3, test x2 (torchvision needs two), valid


def write_celeba(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = root / "celeba"
    images = base / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(N)]
    for i, name in enumerate(names):
        # The central 140x140 one colour, the rest another: the crop must keep only the first.
        pixels = np.full((218, 178, 3), (250, 10, 10), dtype=np.uint8)
        pixels[39:179, 19:159] = (20 * i, 200, 100)
        Image.fromarray(pixels).save(images / name, quality=100, subsampling=0)
    lists = {
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, PARTITION, strict=True)],
        "identity_CelebA.txt": [f"{n} {i + 1}" for i, n in enumerate(names)],
        "list_attr_celeba.txt": [str(N), "Smiling Young", *(f"{n} 1 -1" for n in names)],
        "list_bbox_celeba.txt": [str(N), "image_id x_1 y_1 width height",
                                 *(f"{n} 1 2 3 4" for n in names)],
        "list_landmarks_align_celeba.txt": [str(N), "lefteye_x lefteye_y",
                                            *(f"{n} 5 6" for n in names)],
    }  # fmt: skip
    for filename, lines in lists.items():
        (base / filename).write_text("\n".join(lines) + "\n")
    # torchvision checks each list against the real files' md5: point it at ours instead.
    files = [
        (gid, hashlib.md5((base / f).read_bytes()).hexdigest() if f in lists else md5, f)
        for gid, md5, f in CelebA.file_list
    ]
    monkeypatch.setattr(CelebA, "file_list", files)
    return base


def test_splits_and_the_140_px_centre_crop(tmp_path: Path, monkeypatch) -> None:
    write_celeba(tmp_path, monkeypatch)
    cls = DATASETS.get("celeba")
    train, test = cls.load("train", tmp_path, False), cls.load("test", tmp_path, False)
    assert (len(train), len(test)) == (3, 2)
    image, label = train[2]
    assert image.shape == (3, 64, 64) and label == 0
    expected = torch.tensor([40, 200, 100]) / 127.5 - 1  # image 3's centre colour
    # JPEG blocks straddle the crop's edge (ringing in the outer pixel or two); inside, the
    # centre colour within a few levels, and the whole image far from the border's red.
    assert (image[:, 3:-3, 3:-3] - expected.view(3, 1, 1)).abs().max() < 0.05
    assert (image.mean((1, 2)) - expected).abs().max() < 0.05
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=3)))
    assert batch[0].shape == (3, 3, 64, 64) and batch[1].tolist() == [0, 0, 0]
    assert (cls.info.channels, cls.info.image_size, cls.info.num_classes) == (3, 64, 0)


def test_missing_and_corrupted_are_one_line_errors(tmp_path: Path, monkeypatch) -> None:
    cls = DATASETS.get("celeba")
    with pytest.raises(DatasetError, match="--data-root") as exc:
        cls.load("train", tmp_path, download=False)
    assert "\n" not in str(exc.value)
    base = write_celeba(tmp_path, monkeypatch)
    (base / "list_attr_celeba.txt").write_text("edited\n")  # fails its md5
    with pytest.raises(DatasetError, match="fail torchvision's md5 check") as exc:
        cls.load("train", tmp_path, download=False)
    assert "\n" not in str(exc.value)
