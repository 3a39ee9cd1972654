"""CelebA at 64x64 (``celeba``) through torchvision's ``CelebA`` loader.

The aligned-and-cropped 178x218 images are centre-cropped to 140x140 and resized to 64x64
(bicubic, antialiased): the protocol of the diffusion literature (DDIM, score SDEs) for
CelebA 64. Splits are CelebA's official ``train`` (162,770) and ``test`` (19,962); the
images carry no class labels here (unconditional). The files live under
``<data root>/celeba`` (``img_align_celeba/`` and the five annotation lists, checked against
torchvision's md5 sums). torchvision downloads them from Google Drive, which often refuses
(quota); a failed or absent download is one line saying where to put the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from genbench.core.download import one_line
from genbench.data.datasets import DATASETS, DatasetInfo, DownloadedDataset

CROP = 140
SIZE = 64
_HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def centre_crop_64(img: Image.Image) -> torch.Tensor:
    """An aligned CelebA image -> float32 (3, 64, 64) in [-1, 1]: the central 140x140,
    resized to 64x64 with PIL's antialiased bicubic filter."""
    w, h = img.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    small = img.convert("RGB").crop((left, top, left + CROP, top + CROP))
    small = small.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    hwc = torch.from_numpy(np.array(small, dtype=np.uint8))
    return hwc.permute(2, 0, 1).contiguous().to(torch.float32).div_(127.5).sub_(1.0)


class _Unlabelled(TorchDataset):
    """torchvision's CelebA without targets, as ``(image, 0)`` pairs (collatable)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i][0], 0


@DATASETS.register("celeba")
class CelebA64(DownloadedDataset):
    """CelebA, 3x64x64 (140 px centre crop), unconditional; see the module docstring."""

    info = DatasetInfo(
        name="celeba",
        channels=3,
        image_size=SIZE,
        num_classes=0,
        train_size=162_770,
        test_size=19_962,
        description="CelebA 64x64 (140 px centre crop), unconditional (torchvision; 1.4 GB)",
    )

    @staticmethod
    def _tv() -> type:
        from torchvision.datasets import CelebA

        return CelebA

    @classmethod
    def _make(cls, root: Path, split: str, download: bool) -> TorchDataset:
        data = cls._tv()(
            str(root), split=split, target_type=[], transform=centre_crop_64, download=download
        )
        return _Unlabelled(data)

    @classmethod
    def _present(cls, root: Path) -> Path:
        return root / cls._tv().base_folder

    @classmethod
    def _url(cls) -> str:
        return "https://drive.google.com/"

    @classmethod
    def _unreadable(cls, root: Path, exc: Exception) -> str:
        return (
            f"celeba: the files under {cls._present(root)} are incomplete or fail "
            f"torchvision's md5 check ({one_line(exc)}): it needs img_align_celeba/ and the "
            f"five annotation .txt files from {_HOME}"
        )

    @classmethod
    def _missing(cls, root: Path, why: str) -> str:
        return (
            f"CelebA not found under {root / 'celeba'} and {why}: put img_align_celeba/ and "
            f"the annotation .txt files from {_HOME} there, or pass --data-root DIR holding "
            "celeba/"
        )
