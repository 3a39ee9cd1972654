"""Downsampled ImageNet 64x64 (``imagenet64``) from ``.npz`` batches written here in the
distributed format: ``data`` uint8 (N, 12288), each row the red, green and blue planes of
one image; ``labels`` 1..1000. Stored and compressed files read alike, the big array is
memory-mapped, and missing or malformed files are one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from genbench.core.errors import DatasetError
from genbench.data.datasets import DATASETS
from genbench.data.imagenet64 import npz_array

RNG = np.random.default_rng(0)


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random images (N, 3, 64, 64) uint8 and labels 1..1000 (the files' convention)."""
    return RNG.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8), RNG.integers(1, 1001, n)


def write_batches(root: Path, split: str, parts: list[int], compressed: bool = False) -> tuple:
    """The split's files under root/imagenet64/<archive folder>/; returns all images, labels."""
    folder = root / "imagenet64" / ("Imagenet64_val_npz" if split == "test" else "part1")
    folder.mkdir(parents=True, exist_ok=True)
    names = (
        ["val_data.npz"] if split == "test" else [f"train_data_batch_{i}.npz" for i in range(1, 11)]
    )
    save = np.savez_compressed if compressed else np.savez
    images, labels = [], []
    for name, n in zip(names, parts, strict=True):
        x, y = _images(n)
        # Each row: the 4096 red pixels row by row, then green, then blue.
        save(folder / name, data=x.reshape(n, -1), labels=y, mean=np.zeros(12288))
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("compressed", [False, True])
def test_batches_load_as_images_in_unit_range_with_zero_based_labels(tmp_path, compressed):
    images, labels = write_batches(tmp_path, "train", [3, 2, 1, 1, 1, 1, 1, 1, 1, 4], compressed)
    data = DATASETS.get("imagenet64").load("train", tmp_path)
    assert len(data) == 16
    for i in (0, 2, 3, 5, 15):  # across file boundaries
        x, y = data[i]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        torch.testing.assert_close(x, torch.from_numpy(images[i]).float() / 127.5 - 1)
        assert y == labels[i] - 1
    val_images, val_labels = write_batches(tmp_path, "test", [5], compressed)
    test = DATASETS.get("imagenet64").load("test", tmp_path)
    assert len(test) == 5 and test[4][1] == val_labels[4] - 1
    torch.testing.assert_close(test[4][0], torch.from_numpy(val_images[4]).float() / 127.5 - 1)
    # A DataLoader worker gets the file paths, not the arrays.
    assert len(pickle.dumps(data)) < 10_000
    copy = pickle.loads(pickle.dumps(data))
    torch.testing.assert_close(copy[15][0], data[15][0])


def test_stored_arrays_are_memory_mapped_and_compressed_ones_unpacked_once(tmp_path):
    write_batches(tmp_path, "test", [4])
    stored = tmp_path / "imagenet64" / "Imagenet64_val_npz" / "val_data.npz"
    array = npz_array(stored, "data", tmp_path / "cache")
    assert isinstance(array, np.memmap) and not (tmp_path / "cache").exists()
    with np.load(stored) as data:
        np.testing.assert_array_equal(array, data["data"])
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, data=np.asarray(array))
    unpacked = npz_array(packed, "data", tmp_path / "cache")
    assert isinstance(unpacked, np.memmap)
    assert len(list((tmp_path / "cache").glob("*-packed.npz.data.npy"))) == 1
    again = npz_array(packed, "data", tmp_path / "cache")  # unpacked once, mapped again
    assert len(list((tmp_path / "cache").iterdir())) == 1 and isinstance(again, np.memmap)
    np.testing.assert_array_equal(unpacked, array)


def test_missing_and_malformed_files_are_one_line_errors(tmp_path):
    dataset = DATASETS.get("imagenet64")
    with pytest.raises(DatasetError) as exc:
        dataset.load("train", tmp_path)
    message = str(exc.value)
    assert "train_data_batch_1.npz not found under" in message and "--data-root" in message
    assert "\n" not in message
    write_batches(tmp_path, "train", [1] * 9 + [1])
    (tmp_path / "imagenet64" / "part1" / "train_data_batch_7.npz").unlink()
    with pytest.raises(DatasetError, match=r"train_data_batch_7\.npz not found"):
        dataset.load("train", tmp_path)
    folder = tmp_path / "imagenet64" / "Imagenet64_val_npz"
    folder.mkdir()
    np.savez(folder / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[1, 2])
    with pytest.raises(DatasetError, match=r"not uint8 \(N, 12288\)"):
        dataset.load("test", tmp_path)
    np.savez_compressed(folder / "val_data.npz", data=np.zeros((2, 12288), np.uint8), labels=[1, 2])
    raw = bytearray((folder / "val_data.npz").read_bytes())
    raw[200:260] = bytes(60)  # inside the compressed pixels: zlib fails when unpacking
    (folder / "val_data.npz").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="cannot read ImageNet 64x64") as exc:
        dataset.load("test", tmp_path)
    assert "\n" not in str(exc.value)
    (folder / "val_data.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read ImageNet 64x64") as exc:
        dataset.load("test", tmp_path)
    assert "\n" not in str(exc.value)


def test_bench_stats_reads_the_split(cli, tmp_path, monkeypatch):
    """The data set is a reference like any other: statistics of its test split."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    write_batches(tmp_path, "test", [6])
    made = cli("stats", "imagenet64", "--split", "test", "--data-root", str(tmp_path),
               "--extractor", "digits", "--device", "cpu", "--num-workers", "0")  # fmt: skip
    assert made.code == 0, made.err
    assert "6 images" in made.out
