"""``images``: the user's own folder (recursive) or EDM ``dataset_tool`` zip as training data
and reference, with optional ``dataset.json`` labels; resolution and channel checks; the
statistics cache keyed by the files' content."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genbench.core.errors import DatasetError
from genbench.data.datasets import DATASETS, Digits, dataset_info


def _png(image: torch.Tensor) -> Image.Image:
    """A (1, H, W) image in [-1, 1] as a greyscale PIL image."""
    u8 = image[0].add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(u8, mode="L")


def write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor | None) -> Path:
    """EDM's layout: 00000/img00000000.png ..., a thousand per subfolder (here: 100, so the
    recursion is exercised), and dataset.json when labelled."""
    pairs = []
    for i, img in enumerate(images):
        name = f"{i // 100:05d}/img{i:08d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _png(img).save(root / name)
        if labels is not None:
            pairs.append([name, int(labels[i])])
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": pairs}))
    return root


def write_zip(path: Path, folder: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(folder).as_posix())
    return path


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images, labels = Digits.tensors("train")
    images, labels = images[:300], labels[:300]
    root = tmp_path_factory.mktemp("images")
    folder = write_folder(root / "folder", images, None)
    labelled = write_folder(root / "labelled", images, labels)
    return {"folder": folder, "zip": write_zip(root / "digits.zip", labelled)}


def test_folder_and_zip_read_as_the_images_written(digit_files: dict[str, Path]) -> None:
    images, labels = Digits.tensors("train")
    info = dataset_info("images", digit_files["zip"])
    assert (info.channels, info.image_size, info.num_classes) == (1, 16, 10)
    assert (info.train_size, info.test_size) == (300, 300)
    unlabelled = dataset_info("images", digit_files["folder"])
    assert unlabelled.num_classes == 0
    for key in ("folder", "zip"):
        data = DATASETS.get("images").load("train", digit_files[key])
        assert len(data) == 300
        for i in (0, 150, 299):  # across the subfolders, in path order
            image, label = data[i]
            assert image.shape == (1, 16, 16) and image.dtype == torch.float32
            # uint8 round trip: within half a level of the original
            assert (image - images[i]).abs().max() <= 1 / 127.5 + 1e-6
            assert label == (int(labels[i]) if key == "zip" else 0)


def test_bad_data_roots_are_one_line_errors(tmp_path: Path) -> None:
    images = torch.zeros(3, 1, 8, 8)
    cases = {}
    cases["no --data-root"] = (None, "pass --data-root FOLDER or FILE.zip")
    cases["absent"] = (tmp_path / "absent", "does not exist")
    (tmp_path / "empty").mkdir()
    cases["empty"] = (tmp_path / "empty", "no image files")
    mixed = write_folder(tmp_path / "mixed", images, None)
    _png(torch.zeros(1, 12, 12)).save(mixed / "00000" / "img00000009.png")
    cases["sizes"] = (mixed, "img00000009.png is 12x12, but 00000/img00000000.png is 8x8")
    wide = tmp_path / "wide"
    wide.mkdir()
    _png(torch.zeros(1, 8, 12)).save(wide / "a.png")
    cases["not square"] = (wide, "a.png is 12x8; genbench trains on square images")
    partial = write_folder(tmp_path / "partial", images, torch.tensor([1, 2, 3]))
    doc = json.loads((partial / "dataset.json").read_text())
    (partial / "dataset.json").write_text(json.dumps({"labels": doc["labels"][:2]}))
    cases["unlabelled image"] = (partial, "img00000002.png has no label")
    bad = write_folder(tmp_path / "bad", images, torch.tensor([1, 2, 3]))
    (bad / "dataset.json").write_text('{"labels": [["00000/img00000000.png", "cat"]]}')
    cases["label type"] = (bad, "non-negative integer labels")
    text = tmp_path / "images.tar"
    text.write_bytes(b"not a zip")
    cases["not a zip"] = (text, "no .zip archive")
    for what, (root, expected) in cases.items():
        with pytest.raises(DatasetError) as exc:
            dataset_info("images", root)
        assert expected in str(exc.value) and "\n" not in str(exc.value), what


def test_rgb_images_give_three_channels(tmp_path: Path) -> None:
    folder = tmp_path / "rgb"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    _png(torch.zeros(1, 8, 8)).save(folder / "4.png")  # one grey image among colour ones
    info = dataset_info("images", folder)
    assert (info.channels, info.image_size) == (3, 8)
    image, _ = DATASETS.get("images").load("train", folder)[4]
    assert image.shape == (3, 8, 8)


SPEC = """
[benchmark]
name = "own"
dataset = "images"
data_root = "{root}"
device = "cpu"

[train]
steps = 20
batch_size = 32
log_every = 10

[sample]
num_samples = 64
batch_size = 64
grid_size = 16

[evaluate]
extractor = "digits"
metrics = ["fid", "is"]
bpd_images = 0

[timing]
repeats = 2
warmup = 1
batch_size = 16

[models.vdpm]
generator = "vdpm"
config = {{ channels = 16, channel_mult = [1, 2], num_res_blocks = 1, attn_resolutions = [], \
norm_groups = 4, dropout = 0.0, hflip = false }}
sample = {{ steps = 4 }}
"""


def test_bench_run_trains_on_a_folder_and_on_a_labelled_zip(
    cli, digit_files: dict[str, Path], tmp_path: Path
) -> None:
    seen = {}
    for key in ("folder", "zip"):
        spec = tmp_path / f"{key}.toml"
        spec.write_text(SPEC.format(root=digit_files[key]))
        out = tmp_path / key
        result = cli("run", str(spec), "--out", str(out))
        assert result.code == 0, result.err
        (run,) = out.iterdir()
        record = json.loads((run / "vdpm" / "metrics.json").read_text())
        assert record["train_steps"] == 20 and record["train_images"] == 640
        assert record["metrics"]["fid"]["value"] > 0
        reference = record["protocol"]["reference"]
        assert reference["count"] == 300 and reference["dataset"].startswith("images-")
        seen[key] = (reference["dataset"], record["parameters"])
    # The zip's labels make VDPM class-conditional (a class embedding: more parameters).
    assert seen["zip"][1] > seen["folder"][1]
    # Different files (unlabelled folder, labelled zip of the same pixels): the labels are
    # part of the content, so the reference statistics are cached apart.
    assert seen["folder"][0] != seen["zip"][0]


def test_dataset_override_on_the_command_line(cli, digit_files: dict[str, Path]) -> None:
    folder = str(digit_files["folder"])
    args = ["run", "smoke", "--models", "ddpm", "--dry-run"]
    result = cli(*args, "--dataset", "images", "--data-root", folder)
    assert result.code == 0, result.err
    assert 'dataset = "images"' in result.out and f'data_root = "{folder}"' in result.out
    missing = cli(*args, "--dataset", "images")
    assert missing.code == 2 and "pass --data-root FOLDER or FILE.zip" in missing.err
    unknown = cli(*args, "--dataset", "svhn")
    assert (
        unknown.code == 2
        and "unknown dataset 'svhn'; valid choices: celeba, cifar10" in unknown.err
    )
