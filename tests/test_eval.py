"""Evaluation: extractor loading and preprocessing, streaming statistics, FID, IS, evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from benchmarks.datasets import Digits
from benchmarks.errors import GenbenchError
from eval.evaluator import Evaluator, reference_stats
from eval.extractors import (
    DIGITS_WEIGHTS_SHA256,
    EXTRACTORS,
    FeatureExtractor,
    load_extractor,
)
from eval.metrics import METRICS, frechet_distance, inception_score
from eval.stats import FeatureStats, LogitStore


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
def test_frechet_distance_delegates_to_pytorch_fid() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 6)), rng.normal(1.0, 2.0, size=(300, 6))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = calculate_frechet_distance(*stats[0], *stats[1])
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.0
    with pytest.raises(GenbenchError, match="do not match"):
        frechet_distance(stats[0][0], stats[0][1], np.zeros(5), np.eye(5))


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
    assert METRICS.names() == ["fid", "is"]


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
    by_stats = Evaluator(extractor, train_stats, ["fid", "is"], is_splits=1)
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
