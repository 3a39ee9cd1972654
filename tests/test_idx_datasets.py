"""MNIST, Fashion-MNIST and EMNIST through torchvision's loaders, on small IDX files the
tests write in the real format: shapes, padding, labels, EMNIST's orientation, the
offline and download-failure errors."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from genbench.core.errors import DatasetError
from genbench.data.datasets import DATASETS
from genbench.data.idx import Emnist

FILES = {
    "mnist": ("MNIST", "train", "t10k"),
    "fashion_mnist": ("FashionMNIST", "train", "t10k"),
    "emnist": ("EMNIST", "emnist-balanced-train", "emnist-balanced-test"),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun's format): magic 0x0000080N (uint8, N dimensions), sizes, then bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_dataset(root: Path, name: str, n: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    folder, train, test = FILES[name]
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[split], out[f"{split}_labels"] = images, labels
    return out


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "emnist"])
def test_loads_the_files_padded_to_32_with_labels(tmp_path: Path, name: str) -> None:
    written = write_dataset(tmp_path, name)
    cls = DATASETS.get(name)
    for split in ("train", "test"):
        data = cls.load(split, tmp_path, download=False)
        assert len(data) == 6
        for i in (0, 5):
            image, label = data[i]
            assert image.shape == (1, 32, 32) and image.dtype == torch.float32
            assert label == int(written[f"{split}_labels"][i])
            inner = torch.from_numpy(written[split][i]).float() / 127.5 - 1
            if name == "emnist":
                inner = inner.T  # stored transposed: served upright
            torch.testing.assert_close(image[0, 2:30, 2:30], inner)
            border = torch.ones(32, 32, dtype=torch.bool)
            border[2:30, 2:30] = False
            assert (image[0][border] == -1).all()  # background padding
    info = cls.info
    assert (info.channels, info.image_size) == (1, 32)
    assert info.num_classes == (47 if name == "emnist" else 10)


def test_missing_without_download_is_one_line_naming_data_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        DATASETS.get("mnist").load("train", tmp_path, download=False)
    message = str(exc.value)
    assert "\n" not in message and "--data-root" in message and "MNIST/raw" in message


def test_offline_download_fails_fast_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # a closed port
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="download failed") as exc:
        DATASETS.get("mnist").load("train", tmp_path)
    assert time.perf_counter() - start < 10 and "--data-root" in str(exc.value)
    assert not (tmp_path / "MNIST").exists()


def test_unreadable_files_name_the_folder(tmp_path: Path) -> None:
    write_dataset(tmp_path, "mnist")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DatasetError, match="cannot read the files under") as exc:
        DATASETS.get("mnist").load("train", tmp_path, download=False)
    assert "\n" not in str(exc.value)


def test_emnist_is_the_balanced_split() -> None:
    assert Emnist.split == "balanced" and Emnist.info.train_size == 112_800
