"""``bench eval`` and ``bench eval-speed`` end to end: folders of PNGs against pytorch-fid's own
command line, samples and statistics ``.npz`` files, usage errors, the offline weights error."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_fid import fid_score
from torchvision.utils import save_image

from genbench.eval.extractors import load_extractor
from genbench.eval.inception import FID_WEIGHTS_NAME, WEIGHTS_ENV, random_state_dict
from genbench.eval.reference import accumulate
from genbench.eval.sources import open_source


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights in pytorch-fid's format, under pytorch-fid's file name in a torch hub
    cache (``<TORCH_HOME>/hub/checkpoints``), where pytorch-fid's command line finds them."""
    path = tmp_path_factory.mktemp("torch") / "hub" / "checkpoints" / FID_WEIGHTS_NAME
    path.parent.mkdir(parents=True)
    torch.save(random_state_dict(1), path)
    return path


def write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        save_image(img, folder / f"{i:03d}.png", normalize=True, value_range=(-1, 1))
    return folder


def varied_images(n: int, cells: int, seed: int, channels: int = 3, size: int = 32):
    """Smooth images with a random contrast and colour each (see test_inception)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(n, channels, cells, cells, generator=gen)
    base = F.interpolate(base, size=size, mode="bilinear")
    contrast = torch.rand(n, 1, 1, 1, generator=gen) * 1.5 + 0.1
    offset = torch.rand(n, channels, 1, 1, generator=gen) - 0.5
    return ((base - 0.5) * contrast + offset).clamp(-0.5, 0.5) * 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pngs")
    real = write_pngs(root / "real", varied_images(70, 8, seed=1))
    fake = write_pngs(root / "fake", varied_images(70, 4, seed=2))
    return real, fake


@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
def test_fid_equals_pytorch_fid_command_line(
    cli, folders, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real, fake = folders
    # `python -m pytorch_fid ...`, run in this process (its main() reads sys.argv); it loads
    # the weights from the torch hub cache under TORCH_HOME.
    monkeypatch.setenv("TORCH_HOME", str(weights.parents[2]))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    argv = ["pytorch_fid", "--device", "cpu", "--dims", "64", "--batch-size", "25"]
    monkeypatch.setattr(sys, "argv", [*argv, "--num-workers", "0", str(real), str(fake)])
    fid_score.main()
    expected = float(re.search(r"FID:\s+(\S+)", capsys.readouterr().out).group(1))

    # The same file under a name of our own: under pytorch-fid's name genbench checks that
    # the sha256 starts with 6726825d, which random weights do not.
    ours = tmp_path / "random_inception.pth"
    ours.symlink_to(weights)
    out = tmp_path / "eval.json"
    args = ["eval", str(real), str(fake), "--dims", "64", "--device", "cpu", "--num-workers", "0"]
    result = cli(*args, "--inception-weights", str(ours), "--out", str(out))
    assert result.code == 0, result.err
    saved = json.loads(out.read_text())
    fid = saved["metrics"]["fid"]["value"]
    assert fid == pytest.approx(expected, rel=1e-4)
    assert expected > 1.0
    assert f"| fid | {fid:.6g} |" in result.out
    proto = saved["protocol"]
    assert (proto["extractor"], proto["dims"], proto["resize"]) == (
        "pytorch_fid_inception_v3",
        64,
        "bilinear",
    )
    assert proto["reference"]["folder"] == str(real) and proto["reference"]["count"] == 70
    assert proto["fake"] == {"folder": str(fake)} and proto["num_samples"] == 70


def test_missing_weights_offline_fails_fast_naming_both_options(
    cli, folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import genbench.eval.inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with socket.socket() as s:  # a port nothing listens on: the network is unreachable
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/{FID_WEIGHTS_NAME}"
    monkeypatch.setattr(genbench.eval.inception, "_fid_weights_url", lambda: url)
    start = time.perf_counter()
    result = cli("eval", *map(str, folders), "--device", "cpu", "--out", str(tmp_path / "x.json"))
    assert time.perf_counter() - start < 10
    # The "Downloading ..." notice, then the one-line error.
    notice, error = result.err.strip().splitlines()
    assert result.code == 2 and notice.startswith("Downloading") and error.startswith("bench: ")
    assert "--inception-weights" in error and WEIGHTS_ENV in error
    assert not (tmp_path / "x.json").exists()


def test_samples_npz_and_statistics_npz(cli, tmp_path: Path) -> None:
    # Digits-sized grey samples with the digits extractor: a samples .npz (NHWC uint8, as
    # guided-diffusion writes them) gives exactly what the same images as PNGs give.
    real_images = varied_images(60, 4, seed=3, channels=1, size=16)
    fake_images = varied_images(50, 8, seed=4, channels=1, size=16)
    real = write_pngs(tmp_path / "real", real_images)
    fake = write_pngs(tmp_path / "fake", fake_images)
    u8 = fake_images.add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    samples = tmp_path / "fake.npz"
    np.savez(samples, arr_0=u8.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy())
    common = ["--extractor", "digits", "--device", "cpu", "--num-workers", "0"]
    results = {}
    for name, fake_input in (("folder", fake), ("npz", samples)):
        out = tmp_path / f"{name}.json"
        run = cli("eval", str(real), str(fake_input), *common, "--metrics", "fid,is,kid,pr",
                  "--kid-subset-size", "40", "--out", str(out))  # fmt: skip
        assert run.code == 0, run.err
        assert "real" in run.err and "60/60" in run.err and "50/50" in run.err  # progress
        results[name] = json.loads(out.read_text())["metrics"]
    assert results["npz"] == results["folder"]
    assert set(results["npz"]) == {"fid", "is", "kid", "pr"}
    proto = json.loads((tmp_path / "npz.json").read_text())["protocol"]
    assert proto["reference"]["count"] == 60 and proto["kid_subset_size"] == 40

    # A statistics file (mu, sigma only, float32 as TTUR's) as REAL: the same FID.
    sums, _ = accumulate(load_extractor("digits"), open_source(str(real), "real").batches(25, 0))
    ref = tmp_path / "ref_stats.npz"
    np.savez(ref, mu=sums.mean().astype(np.float32), sigma=sums.cov().astype(np.float32))
    out = tmp_path / "stats.json"
    run = cli("eval", str(ref), str(fake), *common, "--out", str(out))
    assert run.code == 0, run.err
    fid = json.loads(out.read_text())["metrics"]["fid"]["value"]
    assert fid == pytest.approx(results["folder"]["fid"]["value"], rel=1e-4)

    kid = cli("eval", str(ref), str(fake), *common, "--metrics", "kid", "--out", str(out))
    assert kid.code == 2 and "feature vectors" in kid.err
    both = cli("eval", str(ref), str(ref), *common, "--metrics", "fid,is", "--out", str(out))
    assert both.code == 2 and "only fid can be computed" in both.err


def test_usage_errors_are_one_line(cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one = str(write_pngs(tmp_path / "one", varied_images(2, 4, seed=0)))
    single = str(write_pngs(tmp_path / "single", varied_images(1, 4, seed=1)))
    cases = [
        (["eval", one, single], "fake: 1 image; the metrics compare distributions"),
        (["eval", one, one, "--out", str(tmp_path)], f"--out: {tmp_path} is a directory"),
        (["eval", str(tmp_path / "nope"), one], "real: " + str(tmp_path / "nope")),
        (["eval", one, str(tmp_path / "empty")], "fake: no image files"),
        (["eval", one, one, "--metrics", "fid,fdi"], "unknown metric 'fdi'"),
        (["eval", one, one, "--extractor", "digits", "--dims", "2048"], "dims 2048 is not"),
        (["eval", one, one, "--resize", "bicubic"], "resize 'bicubic' is not offered"),
        (
            ["eval", "nosuch:train", one],
            "unknown data set 'nosuch' in nosuch:train; valid choices: celeba, cifar10, digits,",
        ),
        (
            ["eval", str(Path(one).parent / "absent"), one],
            "absent does not exist (nor names a data set",
        ),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "out.json")]
        result = cli(*args, "--device", "cpu", *out)
        assert result.code == 2, (args, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "out.json").exists()


def test_eval_speed_reports_both_rates(cli, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    # 64-d FID alone runs only the first block: cheap enough for a test.
    args = ["eval-speed", "--random-weights", "--num-images", "6", "--batch-size", "3"]
    args += ["--dims", "64", "--metrics", "fid", "--warmup", "1", "--device", "cpu"]
    result = cli(*args, "--out", str(out))
    assert result.code == 0, result.err
    data = json.loads(out.read_text())
    assert data["num_images"] == 6 and data["device"] == "cpu"
    assert data["forward_images_per_s"] > 0 and data["stream_images_per_s"] > 0
    ratio = data["stream_images_per_s"] / data["forward_images_per_s"]
    assert data["stream_over_forward"] == pytest.approx(ratio)
    assert data["protocol"]["num_samples"] == 6 and data["protocol"]["weights_sha256"] == "random"
    assert "bare Inception forward" in result.out and "streaming fid:" in result.out
    assert data["forward_images"] == 6 and data["forward_every"] == 1


def test_eval_speed_can_time_the_forward_on_every_kth_batch(cli, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    # Batches of 3, 3 and 1 images; the forward is timed on the first and the third.
    args = ["eval-speed", "--random-weights", "--num-images", "7", "--batch-size", "3"]
    args += ["--dims", "64", "--metrics", "fid", "--warmup", "0", "--device", "cpu"]
    result = cli(*args, "--forward-every", "2", "--out", str(out))
    assert result.code == 0, result.err
    data = json.loads(out.read_text())
    assert (data["num_images"], data["forward_images"], data["forward_every"]) == (7, 4, 2)
    assert data["forward_images_per_s"] == pytest.approx(4 / data["forward_s"])
    assert data["stream_images_per_s"] == pytest.approx(7 / data["stream_s"])
    assert data["protocol"]["num_samples"] == 7
    assert "on 4 images: 1 batch in 2" in result.out
    assert "streaming path" in result.err and "7/7" in result.err  # the progress bar
    bad = cli(*args, "--forward-every", "0")
    assert bad.code == 2 and "--forward-every" in bad.err


def test_kid_with_fewer_images_than_its_default_subset_is_refused(cli, tmp_path: Path) -> None:
    # 120 images, KID's default subset size 1000: torch-fidelity refuses, and so do we (exit 2,
    # before any network or feature is computed), naming the option that fixes it. A size the
    # user sets is honoured.
    real = write_pngs(tmp_path / "real", varied_images(120, 4, seed=5, channels=1, size=16))
    fake = write_pngs(tmp_path / "fake", varied_images(120, 8, seed=6, channels=1, size=16))
    out = tmp_path / "e.json"
    common = ["--extractor", "digits", "--device", "cpu", "--num-workers", "0", "--out", str(out)]
    run = cli("eval", str(real), str(fake), "--metrics", "fid,kid", *common)
    assert run.code == 2 and not out.exists()
    line = run.err.strip()
    assert "\n" not in line and "--kid-subset-size" in line and "120" in line, line
    run = cli("eval", str(real), str(fake), "--metrics", "kid", "--kid-subset-size", "100", *common)
    assert run.code == 0, run.err
    record = json.loads(out.read_text())
    assert record["protocol"]["kid_subset_size"] == 100 and "kid" in record["metrics"]


@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
def test_stats_of_a_folder_is_pytorch_fids_npz_with_bench_evals_fid(
    cli, folders, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real, fake = folders
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    ours = tmp_path / "random_inception.pth"
    ours.symlink_to(weights)
    common = ["--dims", "64", "--device", "cpu", "--num-workers", "0"]
    stats = tmp_path / "real_stats.npz"
    made = cli("stats", str(real), *common, "--inception-weights", str(ours), "--out", str(stats))
    assert made.code == 0, made.err
    assert made.out.startswith("computed: ") and f"copy: {stats}" in made.out
    assert "70 images, 64-d" in made.out and "70/70" in made.err  # a progress bar

    # pytorch-fid's own command line reads the .npz as a statistics file.
    monkeypatch.setenv("TORCH_HOME", str(weights.parents[2]))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    argv = ["pytorch_fid", "--device", "cpu", "--dims", "64", "--batch-size", "25"]
    monkeypatch.setattr(sys, "argv", [*argv, "--num-workers", "0", str(stats), str(fake)])
    fid_score.main()
    theirs = float(re.search(r"FID:\s+(\S+)", capsys.readouterr().out).group(1))
    out = tmp_path / "eval.json"
    run = cli("eval", str(real), str(fake), *common, "--inception-weights", str(ours),
              "--out", str(out))  # fmt: skip
    assert run.code == 0, run.err
    assert json.loads(out.read_text())["metrics"]["fid"]["value"] == pytest.approx(theirs, rel=1e-4)
    assert theirs > 1.0


def test_stats_cache_image_files_by_content_and_refuse_unknown_sources_first(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    images = varied_images(12, 4, seed=7, channels=1, size=16)
    folder = write_pngs(tmp_path / "imgs", images)
    common = ["--extractor", "digits", "--device", "cpu", "--num-workers", "0"]
    first = cli("stats", str(folder), *common)
    assert first.code == 0 and first.out.startswith("computed: ") and "12/12" in first.err
    again = cli("stats", str(folder), *common)
    # A cache hit: the same entry, and no progress bar left on the screen.
    assert again.code == 0 and again.out.startswith("cached: ") and again.err == ""
    assert again.out.splitlines()[0][8:] == first.out.splitlines()[0][10:]
    # The same images under another folder name hit the same entry (the key is the content
    # and the names inside the folder, not the path) ...
    moved = folder.rename(tmp_path / "elsewhere")
    assert cli("stats", str(moved), *common).out.startswith("cached: ")
    # ... and an edited image is a new entry.
    save_image(images[0].flip(-1), moved / "000.png", normalize=True, value_range=(-1, 1))
    edited = cli("stats", str(moved), *common)
    assert edited.out.startswith("computed: ") and edited.out != first.out

    # A name that is neither a data set nor a file: refused before the (absent) Inception
    # weights are looked for, listing the data sets.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    for source, expected in (
        ("cifar100", "'cifar100' is neither a data set (celeba, cifar10, digits"),
        (str(tmp_path / "absent"), "does not exist"),
    ):
        unknown = cli("stats", source, "--device", "cpu")
        assert unknown.code == 2 and expected in unknown.err, unknown.err
        assert len(unknown.err.strip().splitlines()) == 1 and "Downloading" not in unknown.err


@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
def test_clean_fid_statistics_files_are_read_and_their_mode_checked(
    cli, folders, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clean-fid's ``make_custom_stats`` writes ``<name>_<mode>_custom_na.npz`` (mu, sigma,
    compressed) and ``..._kid.npz`` (the feature vectors, ``feats``): written here in that
    format from the real folder's features, they give bench eval the folder's FID and KID;
    a file of another mode than the evaluation's resize is refused before any weights load."""
    real, fake = folders
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    ours = tmp_path / "random_inception.pth"
    ours.symlink_to(weights)
    common = ["--dims", "64", "--device", "cpu", "--num-workers", "0"]
    stats = tmp_path / "real.npz"
    made = cli("stats", str(real), *common, "--inception-weights", str(ours), "--out", str(stats))
    assert made.code == 0, made.err
    with np.load(stats) as data:
        mu, sigma, feats = data["mu"], data["sigma"], data["features"]
    assert feats.shape == (70, 64)
    clean_dir = tmp_path / "cleanfid_stats"
    clean_dir.mkdir()
    moments = clean_dir / "mydata_legacy_pytorch_custom_na.npz"
    np.savez_compressed(moments, mu=mu, sigma=sigma)
    np.savez_compressed(clean_dir / "mydata_legacy_pytorch_custom_na_kid.npz", feats=feats)

    def metrics(reference: Path) -> dict:
        out = tmp_path / f"{reference.stem}.json"
        run = cli("eval", str(reference), str(fake), *common, "--metrics", "fid,kid",
                  "--kid-subset-size", "30", "--inception-weights", str(ours),
                  "--out", str(out))  # fmt: skip
        assert run.code == 0, run.err
        return json.loads(out.read_text())

    folder = metrics(real)["metrics"]
    from_clean = metrics(moments)
    assert from_clean["metrics"]["fid"]["value"] == pytest.approx(folder["fid"]["value"], rel=1e-4)
    assert from_clean["metrics"]["kid"]["value"] == pytest.approx(folder["kid"]["value"], rel=1e-4)
    assert from_clean["protocol"]["reference"]["clean_fid"] == {
        "mode": "legacy_pytorch",
        "model": "inception_v3",
    }
    # The _kid.npz alone: the moments come from its vectors.
    alone = metrics(clean_dir / "mydata_legacy_pytorch_custom_na_kid.npz")["metrics"]
    assert alone["fid"]["value"] == pytest.approx(folder["fid"]["value"], rel=1e-4)

    # Made another way: refused in one line, naming the fix, before weights are looked for.
    missing_weights = ["--inception-weights", str(tmp_path / "none.pth")]
    for name, expected in (
        ("mydata_clean_custom_na.npz", "clean-fid's clean mode; this evaluation resizes "
         "'bilinear': pass --resize clean"),
        ("mydata_legacy_tensorflow_custom_na.npz", "which genbench cannot reproduce"),
        ("mydata_clean_clip_vit_b_32_custom_na.npz", "clean-fid's clip_vit_b_32 features"),
    ):  # fmt: skip
        other = clean_dir / name
        np.savez_compressed(other, mu=mu, sigma=sigma)
        refused = cli("eval", str(other), str(fake), *common, *missing_weights)
        assert refused.code == 2 and expected in refused.err, refused.err
        assert len(refused.err.strip().splitlines()) == 1
