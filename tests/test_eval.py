"""Evaluation: extractor loading and preprocessing, streaming statistics, FID, IS, KID,
precision/recall (against torch-fidelity on the same numbers), evaluator, shard merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torchvision.utils import save_image

from genbench.core.errors import GenbenchError
from genbench.data.datasets import Digits
from genbench.eval.evaluator import Evaluator, reference_stats
from genbench.eval.extractors import (
    DIGITS_WEIGHTS_SHA256,
    EXTRACTORS,
    ExtractorOptions,
    FeatureExtractor,
    float32_precision,
    load_extractor,
    quantize,
)
from genbench.eval.metrics import (
    METRICS,
    MetricOptions,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from genbench.eval.reference import ReferenceStats, accumulate
from genbench.eval.stats import FeatureStats, FeatureStore, LogitStore


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return load_extractor("digits")


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    return {split: Digits.tensors(split)[0] for split in ("train", "test")}


@pytest.fixture(scope="module")
def train_stats(extractor: FeatureExtractor, digits: dict[str, torch.Tensor]) -> FeatureStats:
    return reference_stats(extractor, digits["train"])


def noise_images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=gen) * 2 - 1


# --- extractors -------------------------------------------------------------------------------


def test_registry_lists_digits_and_extractor_protocol(extractor: FeatureExtractor) -> None:
    assert "digits" in EXTRACTORS.names()
    assert extractor.id == "digits_cnn"
    assert extractor.weights_sha256 == DIGITS_WEIGHTS_SHA256
    assert (extractor.feature_dim, extractor.num_classes, extractor.input_size) == (64, 10, 16)
    assert extractor.resize == "bilinear_antialias"
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())


def test_missing_weights_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(GenbenchError, match="not found") as info:
        load_extractor("digits", weights=missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_wrong_hash_is_a_one_line_error(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(b"not the pinned weights")
    with pytest.raises(GenbenchError, match="sha256") as info:
        load_extractor("digits", weights=wrong)
    assert DIGITS_WEIGHTS_SHA256 in str(info.value) and "\n" not in str(info.value)


def test_unknown_extractor_lists_choices() -> None:
    with pytest.raises(GenbenchError, match="valid choices: digits"):
        load_extractor("inceptoin")


def test_extractor_converts_channels_and_sizes(
    extractor: FeatureExtractor, digits: dict[str, torch.Tensor]
) -> None:
    grey = digits["test"][:20]
    f1, l1 = extractor(grey)
    f3, l3 = extractor(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(f3, f1, rtol=0, atol=0)
    torch.testing.assert_close(l3, l1, rtol=0, atol=0)
    # 2x nearest upsampling then antialiased bilinear downsampling is nearly the identity.
    big = grey.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    f_big, l_big = extractor(big)
    assert f_big.shape == (20, 64) and f_big.dtype == torch.float32
    assert (l_big.argmax(1) == l1.argmax(1)).double().mean().item() >= 0.9
    with pytest.raises(ValueError, match="expected images"):
        extractor(torch.zeros(2, 2, 16, 16))


# --- streaming statistics -----------------------------------------------------------------------


def test_feature_stats_match_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    # A large mean relative to the spread checks the sum-based covariance for cancellation.
    f = torch.randn(500, 12, generator=gen, dtype=torch.float64) * 0.5 + 3.0
    stats = FeatureStats(12)
    for batch in f.split(37):
        stats.update(batch)
    assert stats.count == 500
    np.testing.assert_allclose(stats.mean(), f.numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov(), np.cov(f.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)


def test_merged_shards_equal_one_pass() -> None:
    f = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    whole, left, right = FeatureStats(8), FeatureStats(8), FeatureStats(8)
    whole.update(f)
    left.update(f[:111])
    right.update(f[111:])
    merged = left.merge(right)
    assert merged.count == 300 and left.count == 111
    np.testing.assert_allclose(merged.mean(), whole.mean(), rtol=1e-12)
    np.testing.assert_allclose(merged.cov(), whole.cov(), rtol=1e-10, atol=1e-12)


def test_npz_round_trip_is_pytorch_fid_format(tmp_path: Path, train_stats: FeatureStats) -> None:
    path = tmp_path / "sub" / "ref.npz"
    train_stats.to_npz(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ref.npz"]  # no .partial left
    with np.load(path) as data:
        assert set(data.files) == {"mu", "sigma"}
        assert data["mu"].shape == (64,) and data["sigma"].shape == (64, 64)
    mu, sigma = FeatureStats.from_npz(path)
    np.testing.assert_array_equal(mu, train_stats.mean())
    np.testing.assert_array_equal(sigma, train_stats.cov())
    with pytest.raises(GenbenchError, match="not found"):
        FeatureStats.from_npz(tmp_path / "missing.npz")


# --- FID ----------------------------------------------------------------------------------------


def test_fid_of_identical_statistics_is_zero(train_stats: FeatureStats) -> None:
    mu, sigma = train_stats.mean(), train_stats.cov()
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_orders_real_above_noise(
    extractor: FeatureExtractor, digits: dict[str, torch.Tensor], train_stats: FeatureStats
) -> None:
    ref = (train_stats.mean(), train_stats.cov())
    test_stats = reference_stats(extractor, digits["test"])
    noise_stats = reference_stats(extractor, noise_images(360))
    fid_real = frechet_distance(test_stats.mean(), test_stats.cov(), *ref)
    fid_noise = frechet_distance(noise_stats.mean(), noise_stats.cov(), *ref)
    assert 0 < fid_real < 50
    assert fid_noise > 20 * fid_real


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize("n", [8, 12], ids=["rank-7-of-12", "rank-11-of-12"])
def test_frechet_distance_equals_pytorch_fid_on_singular_covariances(n: int) -> None:
    # No more samples than dimensions (n in 12-d, centred: rank n - 1) make the covariances
    # singular: pytorch-fid's handling of them (sqrtm of a singular product, the eps offset
    # when it is not finite, dropping tiny imaginary parts) is what FID must reproduce.
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, 12)), rng.normal(0.5, 1.5, size=(n, 12))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    assert np.linalg.matrix_rank(stats[0][1]) < 12
    expected = calculate_frechet_distance(*stats[0], *stats[1])
    got = frechet_distance(*stats[0], *stats[1])
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-6) and got > 1


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize(
    ("n", "shift"), [(100, 0.3), (1000, 0.3), (1000, 0.01)], ids=["singular", "full", "close"]
)
def test_frechet_distance_agrees_with_pytorch_fid_on_inception_like_features(
    n: int, shift: float
) -> None:
    # Correlated, rectified features like pool3's, 256-d: fewer samples than dimensions
    # (singular), more (full rank), and two nearly equal sets (a small FID, where the
    # cancellation between the traces is worst).
    rng = np.random.default_rng(n)
    mix = rng.normal(scale=0.1, size=(256, 256))
    a = np.maximum(rng.normal(size=(n, 256)) @ mix, 0)
    b = np.maximum(rng.normal(size=(n, 256)) @ mix + shift, 0)
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = calculate_frechet_distance(*stats[0], *stats[1])
    got = frechet_distance(*stats[0], *stats[1])
    assert got == pytest.approx(expected, rel=1e-6) and got > 0


def test_frechet_distance_of_diagonal_covariances_is_closed_form() -> None:
    # Commuting covariances: tr((S1 S2)^(1/2)) = sum sqrt(s1 s2), so FID is
    # |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 exactly.
    rng = np.random.default_rng(1)
    s1, s2 = rng.uniform(0.1, 4.0, 50), rng.uniform(0.1, 4.0, 50)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    with pytest.raises(GenbenchError, match="do not match"):
        frechet_distance(mu1, np.diag(s1), np.zeros(5), np.eye(5))
    with pytest.raises(GenbenchError, match="NaN"):
        frechet_distance(mu1, np.diag(s1) * np.nan, mu2, np.diag(s2))


# --- Inception Score ----------------------------------------------------------------------------


def numpy_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """Salimans et al.'s recipe written out plainly, as the reference."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    n, scores = len(p), []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_numpy_reference() -> None:
    logits = np.random.default_rng(0).normal(scale=3.0, size=(1003, 10))
    mean, std = inception_score(torch.from_numpy(logits).float(), splits=10)
    ref_mean, ref_std = numpy_inception_score(logits.astype(np.float32).astype(np.float64), 10)
    assert mean == pytest.approx(ref_mean, rel=1e-9)
    assert std == pytest.approx(ref_std, rel=1e-6)
    assert 1.5 < mean < 10 and std > 0


def test_inception_score_extremes() -> None:
    assert inception_score(torch.zeros(100, 10)) == pytest.approx((1.0, 0.0), abs=1e-12)
    confident = 50.0 * torch.eye(10).repeat(20, 1)  # each chunk of 20 holds 2 of each class
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
    with pytest.raises(GenbenchError, match="at least 10 samples"):
        inception_score(torch.zeros(5, 10))


# --- evaluator ----------------------------------------------------------------------------------


def test_metrics_registry_names() -> None:
    assert METRICS.names() == ["fid", "is", "kid", "pr"]


def test_evaluator_is_independent_of_batch_size(
    extractor: FeatureExtractor, digits: dict[str, torch.Tensor], train_stats: FeatureStats
) -> None:
    # Half real test digits, half noise: FID and IS are both far from their extremes.
    images = torch.cat([digits["test"][:150], noise_images(50, seed=1)])
    results = []
    for batch_size in (7, 64):
        ev = Evaluator(extractor, train_stats, ["fid", "is"])
        for batch in images.split(batch_size):
            ev.update(batch)
        results.append(ev.compute())
    small, large = results
    assert small.keys() == {"fid", "is"} and small["is"].keys() == {"value", "std"}
    for name in ("fid", "is"):
        for key, value in small[name].items():
            assert value == pytest.approx(large[name][key], rel=1e-6), (name, key)
    assert small["fid"]["value"] > 10 and small["is"]["value"] > 2


def test_evaluator_reference_forms_and_protocol(
    extractor: FeatureExtractor, digits: dict[str, torch.Tensor], train_stats: FeatureStats
) -> None:
    images = digits["test"]
    by_stats = Evaluator(extractor, train_stats, ["fid", "is"], MetricOptions(is_splits=1))
    by_tuple = Evaluator(extractor, (train_stats.mean(), train_stats.cov()), ["fid"])
    for ev in (by_stats, by_tuple):
        ev.update(images)
    assert by_stats.compute()["fid"] == by_tuple.compute()["fid"]
    # One split over the stratified test set: confident, class-balanced, so nearly 10.
    assert by_stats.compute()["is"]["value"] > 9
    assert len(by_tuple.logits) == 0  # FID alone keeps no logits
    assert by_stats.protocol() == {
        "extractor": "digits_cnn",
        "weights_sha256": DIGITS_WEIGHTS_SHA256,
        "resize": "bilinear_antialias",
        "input_size": 16,
        "dtype": "float32",
        "feature_dim": 64,
        "dims": 64,
        "quantize": True,
        "tf32": False,
        "num_samples": 360,
        "is_splits": 1,
    }


def test_evaluator_rejects_bad_setup(extractor: FeatureExtractor) -> None:
    with pytest.raises(GenbenchError, match="unknown metric 'kidd'"):
        Evaluator(extractor, None, ["kidd"])
    with pytest.raises(GenbenchError, match="reference statistics"):
        Evaluator(extractor, None, ["fid"])
    with pytest.raises(GenbenchError, match="64-d"):
        Evaluator(extractor, (np.zeros(8), np.eye(8)), ["fid"])
    ev = Evaluator(extractor, None, ["is"])
    with pytest.raises(GenbenchError, match="no samples"):
        ev.compute()


def test_logit_store_concatenates_in_order() -> None:
    store = LogitStore()
    a, b = torch.randn(3, 10), torch.randn(4, 10)
    store.update(a)
    store.update(b)
    assert len(store) == 7
    torch.testing.assert_close(store.all(), torch.cat([a, b]), rtol=0, atol=0)


# --- quantization and float32 precision ---------------------------------------------------------


def test_quantized_stream_equals_png_files(extractor: FeatureExtractor, tmp_path: Path) -> None:
    # Generated floats streamed into the evaluator give exactly the features of the same
    # images saved as PNG files (torchvision's save_image) and read back as uint8.
    images = noise_images(6, seed=3)
    read = []
    for i, img in enumerate(images):
        path = tmp_path / f"{i}.png"
        save_image(img, path, normalize=True, value_range=(-1, 1))
        with Image.open(path) as png:
            read.append(torch.from_numpy(np.array(png.convert("L"))).unsqueeze(0))
    from_files = torch.stack(read)
    assert torch.equal(quantize(images), from_files)
    streamed, _ = extractor(images)
    torch.testing.assert_close(extractor(from_files)[0], streamed, rtol=0, atol=0)
    exact = load_extractor("digits", options=ExtractorOptions(quantize=False))
    assert not exact.quantize and exact.protocol()["quantize"] is False
    assert (exact(images)[0] - streamed).abs().max() > 1e-4  # the option does something


def test_float32_precision_pins_and_restores_cuda_flags() -> None:
    # Only the backend flags are touched, so this runs without a GPU.
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, True  # e.g. set by a generator for speed
        with float32_precision(torch.device("cuda"), allow_tf32=True):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)  # pytorch-fid's
        with float32_precision(torch.device("cuda"), allow_tf32=False):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)  # strict
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        with float32_precision(torch.device("cpu"), allow_tf32=False):
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)  # CPU: untouched
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_extractor_option_choices_are_checked() -> None:
    with pytest.raises(GenbenchError, match=r"dims 2048 is not offered.*valid: 64"):
        load_extractor("digits", options=ExtractorOptions(dims=2048))
    with pytest.raises(GenbenchError, match="resize 'clean' is not offered"):
        load_extractor("digits", options=ExtractorOptions(resize="clean"))
    assert EXTRACTORS.get("inception").dims == (2048, 768, 192, 64)
    assert EXTRACTORS.get("inception").resizes == ("bilinear", "clean")


# --- IS, KID and precision/recall against torch-fidelity ----------------------------------------


def test_inception_score_equals_torch_fidelity() -> None:
    # 1003 rows: torch-fidelity's splits and ours are both [i n / 10, (i + 1) n / 10).
    logits = torch.randn(1003, 1008, generator=torch.Generator().manual_seed(4)) * 4
    ref = isc_features_to_metric(logits, splits=10, shuffle=False)
    mean, std = inception_score(logits, 10)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8)
    assert mean > 2 and std > 0


def shifted_features(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated and reference features, float64, from slightly different distributions
    (non-negative like Inception pool3)."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(400, 16, generator=gen, dtype=torch.float64).abs()
    fake = (torch.randn(300, 16, generator=gen, dtype=torch.float64) * 1.2 + 0.2).abs()
    return fake, real


def test_kid_equals_torch_fidelity() -> None:
    fake, real = shifted_features()
    ref = kid_features_to_metric(
        fake, real, kid_subsets=20, kid_subset_size=100, rng_seed=2020, verbose=False
    )
    mean, std = kernel_inception_distance(fake, real, subsets=20, subset_size=100, seed=2020)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)
    assert mean > 5 * std > 0  # clearly non-zero: the draws matter to the comparison
    other = kernel_inception_distance(fake, real, subsets=20, subset_size=100, seed=1)
    assert other[0] != mean


def test_kid_is_unbiased_near_zero_for_one_distribution() -> None:
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(2, 600, 8, generator=gen, dtype=torch.float64).abs()
    same_mean, same_std = kernel_inception_distance(a, b, subsets=50, subset_size=200)
    fake, real = shifted_features()
    shifted_mean, _ = kernel_inception_distance(fake, real, subsets=50, subset_size=200)
    # Subsets of one finite sample are correlated: judge against one subset's spread.
    assert abs(same_mean) < same_std
    assert shifted_mean > 20 * same_std
    # With fewer samples than the subset size, the subsets shrink to fit.
    assert kernel_inception_distance(a[:50], b, subsets=2, subset_size=1000)[0] == pytest.approx(
        kernel_inception_distance(a[:50], b, subsets=2, subset_size=50)[0], rel=1e-12
    )


def test_precision_recall_equals_torch_fidelity() -> None:
    fake, real = shifted_features()
    ref = prc_features_to_metric(
        fake, real, prc_neighborhood=3, prc_batch_size=10_000, save_cpu_ram=False, verbose=False
    )
    precision, recall = precision_recall(fake, real, k=3, block=64)
    # torch-fidelity averages in float32; one sample more or less would move them by >= 1/400.
    assert precision == pytest.approx(ref["precision"], abs=1e-6)
    assert recall == pytest.approx(ref["recall"], abs=1e-6)
    assert 0.2 < precision < 1 and 0.2 < recall < 1


def test_precision_recall_extremes() -> None:
    gen = torch.Generator().manual_seed(7)
    real = torch.randn(300, 2, generator=gen)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real + 100, real) == (0.0, 0.0)
    # Samples from one tight region of the real ones: precise, but recall the rest poorly.
    collapsed = real[real[:, 0] > 1.0][:40]
    precision, recall = precision_recall(collapsed, real)
    assert precision == 1.0 and recall < 0.35
    with pytest.raises(GenbenchError, match="more than 3 samples"):
        precision_recall(real[:3], real)


# --- feature store, merging, KID / PR in the evaluator -----------------------------------------


def test_feature_store_keeps_the_first_rows() -> None:
    rows = torch.arange(30.0).reshape(10, 3)
    store, left, right = FeatureStore(7), FeatureStore(7), FeatureStore(7)
    for batch in rows.split(3):
        store.update(batch)
    left.update(rows[:2])
    right.update(rows[2:])
    assert len(store) == 7 and torch.equal(store.all(), rows[:7])
    assert torch.equal(left.merge(right).all(), rows[:7])
    empty = FeatureStore(0)
    empty.update(rows)
    assert len(empty) == 0


@pytest.fixture(scope="module")
def train_reference(extractor: FeatureExtractor, digits: dict[str, torch.Tensor]):
    stats, kept = accumulate(extractor, digits["train"].split(500), max_features=1000)
    return ReferenceStats.from_accumulated(stats, kept, {"dataset": "digits", "split": "train"})


ALL_METRICS = ["fid", "is", "kid", "pr"]
OPTIONS = MetricOptions(kid_subsets=10, kid_subset_size=100, max_features=150)


def test_evaluator_result_format_and_protocol(
    extractor: FeatureExtractor, digits: dict[str, torch.Tensor], train_reference
) -> None:
    ev = Evaluator(extractor, train_reference, ALL_METRICS, OPTIONS)
    for batch in digits["test"][:200].split(64):
        ev.update(batch)
    out = ev.compute()
    assert {k: set(v) for k, v in out.items()} == {
        "fid": {"value"},
        "is": {"value", "std"},
        "kid": {"value", "std"},
        "pr": {"precision", "recall", "k"},
    }
    assert out["pr"]["k"] == 3 and 0.5 < out["pr"]["precision"] <= 1
    proto = ev.protocol()
    assert (proto["num_samples"], proto["max_features"], proto["num_features"]) == (200, 150, 150)
    assert (proto["kid_subsets"], proto["kid_subset_size"], proto["kid_seed"]) == (10, 100, 2020)
    assert proto["pr_k"] == 3
    assert proto["reference"] == {
        "dataset": "digits",
        "split": "train",
        "count": 1437,
        "stats_sha256": train_reference.sha256,
        "num_features": 1000,
    }
    # KID and PR use the first 150 generated features and the reference's kept ones.
    kid = kernel_inception_distance(
        ev.features.all(), train_reference.features, subsets=10, subset_size=100
    )
    assert out["kid"] == {"value": kid[0], "std": kid[1]}


def test_merged_evaluators_equal_one_pass(
    extractor: FeatureExtractor, digits: dict[str, torch.Tensor], train_reference
) -> None:
    images = torch.cat([digits["test"][:150], noise_images(50, seed=8)])
    whole = Evaluator(extractor, train_reference, ALL_METRICS, OPTIONS)
    whole.update(images)
    shards = [Evaluator(extractor, train_reference, ALL_METRICS, OPTIONS) for _ in range(2)]
    shards[0].update(images[:77])
    shards[1].update(images[77:])
    merged = shards[0].merge(shards[1])
    assert merged.stats.count == 200 and shards[0].stats.count == 77
    expected, got = whole.compute(), merged.compute()
    for name in ALL_METRICS:
        for key, value in expected[name].items():
            assert got[name][key] == pytest.approx(value, rel=1e-9), (name, key)
    with pytest.raises(ValueError, match="different metrics"):
        whole.merge(Evaluator(extractor, train_reference, ["fid"]))


def test_kid_and_pr_need_reference_features(
    extractor: FeatureExtractor, train_stats: FeatureStats
) -> None:
    moments = (train_stats.mean(), train_stats.cov())
    for metric in ("kid", "pr"):
        with pytest.raises(GenbenchError, match="need reference feature vectors"):
            Evaluator(extractor, moments, [metric])
    assert "fid" in Evaluator(extractor, moments, ["fid"]).metrics
