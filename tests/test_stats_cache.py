"""Reference statistics cache: keys, reuse, stale entries, ``bench stats``, and the runner's use
of it (cached statistics, a user-supplied .npz, KID and precision/recall in a run)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from pytorch_fid.fid_score import compute_statistics_of_path

import genbench.eval.reference
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.core.errors import SpecError
from genbench.data.datasets import Digits
from genbench.eval.extractors import ExtractorOptions, FeatureExtractor, load_extractor
from genbench.eval.reference import (
    CACHE_ENV,
    StatsCache,
    cache_key,
    dataset_reference,
    stats_cache_dir,
)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return load_extractor("digits")


@pytest.fixture(scope="module")
def test_set():
    """The 360 test digits: the cache logic does not need the 1,437 training ones."""
    return Digits.load("test")


class Counter:
    """``on_batch`` that counts the images streamed through the extractor."""

    def __init__(self) -> None:
        self.images = 0

    def __call__(self, n: int) -> None:
        self.images += n


def reference(extractor, data, cache: StatsCache, num_features: int = 0, split: str = "test"):
    counter = Counter()
    ref = dataset_reference(
        extractor, data, "digits", split, num_features=num_features, cache=cache,
        progress=lambda total: contextlib.nullcontext(counter),
    )  # fmt: skip
    return ref, counter.images


def test_cache_directory_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert stats_cache_dir() == tmp_path / "c" / "stats"
    assert StatsCache().directory == tmp_path / "c" / "stats"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert stats_cache_dir() == tmp_path / "home" / ".cache" / "genbench" / "stats"


def test_computed_once_then_read_back(extractor, test_set, tmp_path: Path) -> None:
    cache = StatsCache(tmp_path)
    first, streamed = reference(extractor, test_set, cache, num_features=300)
    assert streamed == 360 and first.count == 360 and first.features.shape == (300, 64)
    again, streamed = reference(extractor, test_set, cache, num_features=200)
    assert streamed == 0  # read from the cache
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.sigma, first.sigma)
    np.testing.assert_array_equal(again.features, first.features[:200])
    assert again.sha256 == first.sha256 and again.count == 360
    assert again.protocol() == {
        "dataset": "digits",
        "split": "test",
        "count": 360,
        "stats_sha256": first.sha256,
        "num_features": 200,
    }
    path = cache.path(cache_key(extractor, "digits", "test", 360))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.stem + ".json", path.name]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["num_features"] == 300 and meta["stats_sha256"] == first.sha256
    key = meta["key"]
    assert (key["dataset"], key["split"], key["count"], key["dims"]) == ("digits", "test", 360, 64)
    for field in ("extractor", "weights_sha256", "resize", "quantize", "tf32"):
        assert key[field] == extractor.protocol()[field]
    # pytorch-fid reads the entry as its own statistics file.
    mu, sigma = compute_statistics_of_path(str(path), None, 1, 64, "cpu")
    np.testing.assert_array_equal(mu, first.mu)
    np.testing.assert_array_equal(sigma, first.sigma)


def test_key_follows_the_protocol(extractor, test_set, tmp_path: Path) -> None:
    exact = load_extractor("digits", options=ExtractorOptions(quantize=False))
    keys = [
        cache_key(extractor, "digits", "train", 1437),
        cache_key(exact, "digits", "train", 1437),
        cache_key(extractor, "digits", "test", 360),
        cache_key(extractor, "digits", "train", 1000),
    ]
    paths = {StatsCache(tmp_path).path(k) for k in keys}
    assert len(paths) == 4


def test_stale_or_broken_entries_are_recomputed(
    extractor, test_set, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = StatsCache(tmp_path)
    first, _ = reference(extractor, test_set, cache, num_features=100)
    path = cache.path(cache_key(extractor, "digits", "test", 360))
    sidecar = path.with_suffix(".json")

    # More feature vectors than the entry kept: recomputed, and the entry now holds them.
    _, streamed = reference(extractor, test_set, cache, num_features=200)
    assert streamed == 360 and json.loads(sidecar.read_text())["num_features"] == 200

    # A sidecar whose hash does not match the statistics next to it.
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "stats_sha256": "0" * 64}))
    _, streamed = reference(extractor, test_set, cache)
    assert streamed == 360

    # A damaged .npz: reported on stderr, recomputed, never trusted.
    path.write_bytes(b"not an npz")
    again, streamed = reference(extractor, test_set, cache)
    assert streamed == 360 and again.sha256 == first.sha256
    assert "ignoring unreadable cache entry" in capsys.readouterr().err

    # No sidecar (e.g. killed between the two writes): recomputed.
    sidecar.unlink()
    _, streamed = reference(extractor, test_set, cache)
    assert streamed == 360 and sidecar.is_file()
    assert not list(tmp_path.glob("*.partial"))


def test_bench_stats_builds_then_finds_the_entry(cli, tmp_path: Path) -> None:
    args = ["stats", "digits", "--split", "test", "--extractor", "digits", "--device", "cpu"]
    first = cli(*args, "--num-features", "50", "--out", str(tmp_path / "copy.npz"))
    assert first.code == 0, first.err
    assert first.out.startswith("computed: " + str(stats_cache_dir()))
    assert "digits test: 360 images, 64-d" in first.out and "50 feature vectors" in first.out
    # The progress bar goes to stderr, leaving stdout to the results.
    assert "digits test features" in first.err and "360/360" in first.err
    with np.load(tmp_path / "copy.npz") as data:
        assert set(data.files) == {"mu", "sigma", "features"}
        assert data["features"].shape == (50, 64)
    second = cli(*args, "--num-features", "50")
    assert second.code == 0 and second.out.startswith("cached: ")
    forced = cli(*args, "--num-features", "50", "--force")
    assert forced.code == 0 and forced.out.startswith("computed: ")
    bad = cli("stats", "digits", "--split", "val", "--extractor", "digits", "--device", "cpu")
    assert bad.code == 2 and "unknown split 'val'" in bad.err


# --- the runner ------------------------------------------------------------------------------


@pytest.fixture
def count_streams(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts reference statistics computations (``genbench.eval.reference.accumulate``)."""
    calls: list[int] = []
    original = genbench.eval.reference.accumulate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(genbench.eval.reference, "accumulate", counting)
    return calls


def run_metrics(out: Path) -> dict:
    (run,) = list(out.iterdir())
    return json.loads((run / "dcgan" / "metrics.json").read_text())


METRICS_KID_100 = 'metrics = ["fid", "is", "kid", "pr"]\nkid_subset_size = 100'


def test_runs_reuse_cached_statistics_and_report_every_metric(
    cli, tiny_spec, tmp_path: Path, count_streams: list[int]
) -> None:
    spec = tiny_spec(steps=0, num_samples=100).read_text()
    spec = spec.replace('metrics = ["fid", "is"]', 'metrics = ["fid", "is", "kid", "pr"]')
    path = tmp_path / "all.toml"
    # 100 samples, fewer than KID's default subset size (1000): refused before any work.
    path.write_text(spec + "\n")
    refused = cli("run", str(path), "--out", str(tmp_path / "refused"))
    assert refused.code == 2 and "evaluate.kid_subset_size (at most 100)" in refused.err
    assert len(refused.err.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    spec = spec.replace('metrics = ["fid", "is", "kid", "pr"]', METRICS_KID_100)
    path.write_text(spec + "\n")
    results = []
    for name in ("a", "b"):
        result = cli("run", str(path), "--out", str(tmp_path / name))
        assert result.code == 0, result.err
        results.append(run_metrics(tmp_path / name))
    assert len(count_streams) == 1  # the second run read the cache
    first, second = results
    assert first["protocol"] == second["protocol"]
    assert first["metrics"] == second["metrics"]
    metrics, proto = first["metrics"], first["protocol"]
    assert set(metrics["kid"]) == {"value", "std"} and metrics["pr"]["k"] == 3
    assert 0 <= metrics["pr"]["precision"] <= 1 and 0 <= metrics["pr"]["recall"] <= 1
    assert (proto["num_features"], proto["kid_subset_size"], proto["pr_k"]) == (100, 100, 3)
    assert (proto["dims"], proto["quantize"], proto["tf32"]) == (64, True, False)
    assert proto["reference"]["count"] == 1437 and proto["reference"]["num_features"] == 1437


def test_run_with_a_statistics_file_as_reference(cli, tiny_spec, tmp_path: Path) -> None:
    stats = tmp_path / "ref.npz"
    made = cli("stats", "digits", "--extractor", "digits", "--device", "cpu", "--out", str(stats))
    assert made.code == 0, made.err
    with np.load(stats) as data:  # as TTUR's files: mu and sigma only
        np.savez(stats, mu=data["mu"], sigma=data["sigma"])
    spec = tiny_spec(steps=0, num_samples=64).read_text()
    extra = f'metrics = ["fid", "is"]\nreference_stats = "{stats}"'
    path = tmp_path / "file.toml"
    path.write_text(spec.replace('metrics = ["fid", "is"]', extra))
    result = cli("run", str(path), "--out", str(tmp_path / "runs"))
    assert result.code == 0, result.err
    reference = run_metrics(tmp_path / "runs")["protocol"]["reference"]
    assert reference["path"] == str(stats) and "count" not in reference  # unknown: not stated

    kid = extra.replace('"is"', '"kid"') + "\nkid_subset_size = 50"
    path.write_text(spec.replace('metrics = ["fid", "is"]', kid))
    refused = cli("run", str(path), "--out", str(tmp_path / "refused"))
    assert refused.code == 2 and "need feature vectors" in refused.err
    assert not (tmp_path / "refused").exists()

    # The same file given on the command line instead of in the spec.
    plain = tiny_spec(steps=0, num_samples=64)
    given = cli("run", str(plain), "--reference-stats", str(stats), "--out", str(tmp_path / "cli"))
    assert given.code == 0, given.err
    assert run_metrics(tmp_path / "cli")["protocol"]["reference"]["path"] == str(stats)
    missing = cli("run", str(plain), "--reference-stats", str(tmp_path / "no.npz"), "--dry-run")
    assert missing.code == 2 and "--reference-stats: no such file" in missing.err


def test_spec_fills_and_checks_the_evaluation_protocol(tiny_spec, tmp_path: Path) -> None:
    plan = resolve(*read_spec(str(tiny_spec())), Overrides())
    evaluate = plan.to_dict()["evaluate"]
    assert (evaluate["dims"], evaluate["resize"]) == (64, "bilinear_antialias")
    assert (evaluate["quantize"], evaluate["tf32"], evaluate["cache"]) == (True, True, True)
    assert (evaluate["max_features"], evaluate.get("kid_subset_size"), evaluate["pr_k"]) == (
        10_000,
        None,  # KID's default (1000), strict: fewer samples than it is refused
        3,
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        tiny_spec().read_text().replace('extractor = "digits"', 'extractor = "digits"\ndims = 2048')
    )
    with pytest.raises(SpecError, match=r"evaluate: .*dims 2048 is not offered.*valid: 64"):
        read_spec(str(bad))
