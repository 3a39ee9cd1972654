"""Data set registry: the embedded ``digits`` set and ``cifar10`` on tiny hand-written files.

The CIFAR-10 tests never touch the network: they write a few images in CIFAR's python format
and point torchvision's md5 table at them, so torchvision's real loading code runs unmodified.
Download failures are provoked against 127.0.0.1 (a closed port, or a local server that
stalls or serves a wrong archive).
"""

from __future__ import annotations

import hashlib
import http.server
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10

from genbench.core.errors import DatasetError, UnknownNameError
from genbench.data import datasets
from genbench.data.datasets import (
    DATASETS,
    Cifar10,
    Digits,
    dataset_info,
    default_data_root,
    get_dataset,
    resolve_data_root,
)

# ---------------------------------------------------------------------------- registry


def test_registry_lists_the_datasets() -> None:
    assert DATASETS.names() == [
        "celeba",
        "cifar10",
        "digits",
        "emnist",
        "fashion_mnist",
        "imagenet64",
        "images",
        "mnist",
    ]


def test_registry_maps_names_to_classes() -> None:
    assert get_dataset("cifar10") is Cifar10
    assert get_dataset("digits") is Digits


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown dataset 'svhn'; valid choices: celeba, cifar10, digits"
    ):
        get_dataset("svhn")


def test_dataset_info_without_loading() -> None:
    info = dataset_info("cifar10")
    assert (info.channels, info.image_size, info.num_classes) == (3, 32, 10)
    assert (info.train_size, info.test_size) == (50000, 10000)
    assert dataset_info("digits") is Digits.info


@pytest.mark.parametrize("cls", [Digits, Cifar10])
def test_unknown_split(cls: type, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        cls.load("val", root=tmp_path, download=False)


# ---------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: Digits.tensors(split) for split in ("train", "test")}


@pytest.mark.parametrize(("split", "n"), [("train", 1437), ("test", 360)])
def test_digits_shapes_range_labels(digits: dict, split: str, n: int) -> None:
    x, y = digits[split]
    assert x.shape == (n, 1, 16, 16) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min() >= -1.0 and x.max() <= 1.0
    # The extremes are reached (background is exactly -1, full ink exactly 1).
    assert x.min() == -1.0 and x.max() == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))
    assert len(Digits.load(split)) == n


def test_digits_split_is_deterministic(digits: dict) -> None:
    for split, (x, y) in digits.items():
        x2, y2 = Digits.tensors(split)
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_digits_train_and_test_are_disjoint(digits: dict) -> None:
    # Exact row equality, via the rows' bytes (a set is far cheaper than an N x M compare).
    train = {row.numpy().tobytes() for row in digits["train"][0].flatten(1)}
    test = [row.numpy().tobytes() for row in digits["test"][0].flatten(1)]
    assert len(train) == 1437 and len(set(test)) == 360
    # The 1,797 source images contain no exact duplicates, so none may straddle the split.
    assert sum(row in train for row in test) == 0


# ---------------------------------------------------------------------------- cifar10 files

N_PER_TRAIN_BATCH = 3
N_TEST = 4
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer"]
LABEL_NAMES += ["dog", "frog", "horse", "ship", "truck"]


@dataclass
class FakeCifar:
    root: Path
    data: dict[str, np.ndarray]  # split -> uint8 (n, 3072), rows as written
    labels: dict[str, list[int]]

    @property
    def base(self) -> Path:
        return self.root / CIFAR10.base_folder


def _dump(path: Path, obj: dict) -> None:
    # The real files are Python 2 pickles whose str keys (b"data" on disk) come back as str
    # under torchvision's encoding="latin1"; Python 3 str keys load identically.
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_fake_cifar(root: Path) -> FakeCifar:
    """A few random images per batch file in CIFAR-10's python layout."""
    rng = np.random.default_rng(0)
    base = root / CIFAR10.base_folder
    base.mkdir(parents=True)
    data: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    files = [(f"data_batch_{i}", "train", N_PER_TRAIN_BATCH) for i in range(1, 6)]
    for name, split, n in [*files, ("test_batch", "test", N_TEST)]:
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        ys = [int(v) for v in rng.integers(0, 10, size=n)]
        _dump(base / name, {"batch_label": name, "labels": ys, "data": rows, "filenames": []})
        data[split].append(rows)
        labels[split] += ys
    meta = {"label_names": LABEL_NAMES, "num_cases_per_batch": N_PER_TRAIN_BATCH, "num_vis": 3072}
    _dump(base / "batches.meta", meta)
    return FakeCifar(root, {k: np.concatenate(v) for k, v in data.items()}, labels)


def accept_fake_md5s(monkeypatch: pytest.MonkeyPatch, fake: FakeCifar) -> None:
    """Point torchvision's md5 table at the files ``write_fake_cifar`` wrote."""
    train = [[f"data_batch_{i}", _md5(fake.base / f"data_batch_{i}")] for i in range(1, 6)]
    monkeypatch.setattr(CIFAR10, "train_list", train)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(fake.base / "test_batch")]])
    meta = {**CIFAR10.meta, "md5": _md5(fake.base / "batches.meta")}
    monkeypatch.setattr(CIFAR10, "meta", meta)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if torchvision tries to download anything."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", refuse)


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCifar:
    fake = write_fake_cifar(tmp_path / "data")
    accept_fake_md5s(monkeypatch, fake)
    return fake


# ---------------------------------------------------------------------------- cifar10 loading


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("download", [False, True])
def test_cifar_loads_present_files(
    fake_cifar: FakeCifar, no_network: None, split: str, download: bool
) -> None:
    ds = Cifar10.load(split, root=fake_cifar.root, download=download)
    rows, labels = fake_cifar.data[split], fake_cifar.labels[split]
    assert len(ds) == len(rows) == {"train": 5 * N_PER_TRAIN_BATCH, "test": N_TEST}[split]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert isinstance(y, int) and y == labels[i]
        # CIFAR rows are channel planes of 1024 row-major pixels: R, then G, then B.
        want = torch.from_numpy(rows[i].reshape(3, 32, 32).astype(np.float32)) / 127.5 - 1
        assert torch.equal(x, want)


def test_cifar_pixel_lands_at_its_position(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = write_fake_cifar(tmp_path)
    # Overwrite test image 1 with a known pattern: all 0 except three marked pixels.
    marks = {(0, 3, 7): 255, (1, 30, 2): 128, (2, 0, 31): 51}
    row = np.zeros(3072, dtype=np.uint8)
    for (c, h, w), v in marks.items():
        row[c * 1024 + h * 32 + w] = v
    fake.data["test"][1] = row
    batch = {"labels": fake.labels["test"], "data": fake.data["test"]}
    _dump(fake.base / "test_batch", batch)
    accept_fake_md5s(monkeypatch, fake)

    x, _ = Cifar10.load("test", root=tmp_path, download=False)[1]
    for (c, h, w), v in marks.items():
        assert x[c, h, w].item() == pytest.approx(v / 127.5 - 1, abs=1e-7)
    assert x[0, 3, 7] == 1.0  # 255 maps to exactly 1
    assert (x == -1.0).sum() == 3 * 32 * 32 - len(marks)  # 0 maps to exactly -1


def test_cifar_train_and_test_differ(fake_cifar: FakeCifar, no_network: None) -> None:
    train = Cifar10.load("train", root=fake_cifar.root, download=False)
    test = Cifar10.load("test", root=fake_cifar.root, download=False)
    assert torch.equal(train[0][0], Cifar10.load("train", root=fake_cifar.root)[0][0])
    assert not torch.equal(train[0][0], test[0][0])
    assert train[N_PER_TRAIN_BATCH][1] == fake_cifar.labels["train"][N_PER_TRAIN_BATCH]


def test_cifar_batches_through_dataloader(fake_cifar: FakeCifar) -> None:
    ds = Cifar10.load("train", root=fake_cifar.root, download=False)
    pickle.dumps(ds)  # DataLoader workers need a picklable data set (no lambdas inside)
    x, y = next(iter(DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == fake_cifar.labels["train"][:4]


def test_root_none_uses_env_then_home(
    fake_cifar: FakeCifar, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BENCH_DATA_ROOT", str(fake_cifar.root))
    assert default_data_root() == fake_cifar.root
    assert len(Cifar10.load("test", root=None, download=False)) == N_TEST
    monkeypatch.delenv("BENCH_DATA_ROOT")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root(None) == tmp_path / "home" / ".cache" / "genbench" / "data"


# ---------------------------------------------------------------------------- cifar10 failures


def assert_one_line_fix(err: pytest.ExceptionInfo[DatasetError], *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for needle in ("--data-root", *needles):
        assert needle in msg


def test_missing_without_download_fails_fast(tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        Cifar10.load("train", root=root, download=False)
    assert time.perf_counter() - start < 1.0
    assert_one_line_fix(err, str(root), "cifar-10-batches-py", "download disabled")
    assert not root.exists()


class _BadArchiveHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.body`` (announcing ``server.length`` bytes), then optionally stalls."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.server.length))
        self.end_headers()
        self.wfile.write(self.server.body)
        self.wfile.flush()
        if self.server.stall:
            self.server.release.wait(30)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a local server that stalls mid-archive ("stall") or serves junk ("junk")."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadArchiveHandler)
    server.daemon_threads = True
    server.body = b"\x1f\x8b" + bytes(4094)  # looks like the start of a gzip stream
    server.stall = request.param == "stall"
    server.length = 10 * len(server.body) if server.stall else len(server.body)
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{CIFAR10.filename}"
    server.release.set()
    server.shutdown()
    server.server_close()


def _assert_download_fails_cleanly(root: Path, reason: str) -> None:
    before = socket.getdefaulttimeout()
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        Cifar10.load("train", root=root, download=True)
    assert time.perf_counter() - start < 20.0
    assert_one_line_fix(err, str(root), "download failed", reason)
    assert socket.getdefaulttimeout() == before
    # No half-written archive or half-extracted folder to confuse the next attempt.
    assert not (root / CIFAR10.filename).exists()
    assert not (root / CIFAR10.base_folder).exists()


def test_download_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 (discard) has no listener here: the connection is refused at once.
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    _assert_download_fails_cleanly(tmp_path / "data", "refused")


@pytest.mark.parametrize(
    ("archive_server", "reason"),
    [("stall", "timed out"), ("junk", "corrupted")],
    indirect=["archive_server"],
)
def test_download_bad_transfer_leaves_nothing(
    archive_server: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short timeout keeps the stalled case fast; the mechanism is the one used at 15 s.
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(CIFAR10, "url", archive_server)
    _assert_download_fails_cleanly(tmp_path / "data", reason)


@pytest.mark.parametrize("download", [False, True])
def test_files_failing_real_md5s_are_reported(
    tmp_path: Path, no_network: None, download: bool
) -> None:
    fake = write_fake_cifar(tmp_path)  # real md5 table: none of these files match it
    with pytest.raises(DatasetError) as err:
        Cifar10.load("test", root=tmp_path, download=download)
    assert_one_line_fix(err, f"{fake.base} is corrupted", "md5 mismatch in data_batch_1")


def test_one_corrupted_batch_is_named(fake_cifar: FakeCifar, no_network: None) -> None:
    path = fake_cifar.base / "data_batch_3"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte, as from a bad disk or transfer
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetError) as err:
        Cifar10.load("test", root=fake_cifar.root, download=False)
    assert_one_line_fix(err, str(fake_cifar.base), "md5 mismatch in data_batch_3")


def test_missing_batch_is_named(fake_cifar: FakeCifar, no_network: None) -> None:
    (fake_cifar.base / "data_batch_5").unlink()
    with pytest.raises(DatasetError) as err:
        Cifar10.load("train", root=fake_cifar.root, download=True)
    assert_one_line_fix(err, "data_batch_5 missing")
