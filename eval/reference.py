"""Reference statistics: the real images' side of every metric, computed once and cached.

``ReferenceStats`` holds the moments FID needs (``mu``, ``sigma``), the image count, optionally
the first feature vectors (KID and precision/recall need them) and where it all came from. It
is read from and written to pytorch-fid's ``.npz`` format: ``mu`` and ``sigma``, plus an
optional ``features`` array that pytorch-fid ignores, so a TTUR or pytorch-fid statistics file
is accepted as a reference and ours are usable by pytorch-fid. clean-fid's statistics files
(``make_custom_stats`` and its downloads: ``<name>_<mode>[_<model>]_<split>_<res>.npz`` with
``mu`` and ``sigma``, and ``..._kid.npz`` with the feature vectors ``feats``) are read too;
their name says how the features were made (``clean_fid_name``), and ``check_stats_protocol``
refuses one made another way than the evaluation at hand.

``StatsCache`` keeps one entry per (dataset, split, image count, extractor protocol: id,
weights sha256, resize, dims, quantize, TF32, ...) under ``$BENCH_CACHE_DIR/stats`` (default
``~/.cache/genbench/stats``): ``<name>.npz`` plus a ``<name>.json`` sidecar holding the key,
the statistics' sha256 and the number of feature vectors stored. Both are written atomically,
and an entry whose sidecar, key or hash does not match is recomputed, never trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from genbench.core import io
from genbench.core.cache import CACHE_ENV, cache_root  # noqa: F401  (re-exported)
from genbench.core.errors import GenbenchError, NonFinite
from genbench.core.progress import counting
from genbench.data.datasets import DATASETS
from genbench.eval.extractors import FeatureExtractor
from genbench.eval.metrics import ReferenceInputs
from genbench.eval.stats import FeatureStats, FeatureStore, save_npz, stats_sha256

CACHE_FORMAT = 1
"""Version of the cache entry layout; part of every key, so a new layout never reads an old one."""


def stats_cache_dir() -> Path:
    """Where reference statistics are cached: ``cache_root() / "stats"``."""
    return cache_root() / "stats"


CLEAN_FID_FILE = re.compile(
    r"^(?P<name>.+?)_(?P<mode>clean|legacy_pytorch|legacy_tensorflow)"
    r"(?:_(?P<model>clip_vit_b_32))?_(?P<split>[a-z0-9]+)_(?P<res>na|\d+)(?P<kid>_kid)?\.npz$"
)
"""clean-fid's statistics file names (``fid.make_custom_stats``, ``get_reference_statistics``)."""
CLEAN_FID_RESIZE = {"clean": "clean", "legacy_pytorch": "bilinear"}
"""The genbench ``resize`` that makes the same Inception features as each clean-fid mode
(``legacy_tensorflow``, TensorFlow's resize, has none)."""


@dataclass(frozen=True)
class CleanFidName:
    """What a clean-fid statistics file's name says about it."""

    mode: str
    model: str  # "inception_v3" or "clip_vit_b_32"
    kid: bool  # the ``_kid.npz`` companion (feature vectors), not the moments


def clean_fid_name(path: Path) -> CleanFidName | None:
    """The clean-fid protocol a statistics file's name states, or None for other names."""
    match = CLEAN_FID_FILE.match(Path(path).name.lower())
    if match is None:
        return None
    return CleanFidName(match["mode"], match["model"] or "inception_v3", match["kid"] is not None)


def check_stats_protocol(path: Path, extractor: str, resize: str | None, what: str) -> None:
    """A clean-fid statistics file made another way than this evaluation (another feature
    network, another resize) gives FIDs that mean nothing: a one-line ``GenbenchError``
    naming the option to change. Files with other names are not checked."""
    name = clean_fid_name(path)
    if name is None:
        return
    if name.model != "inception_v3":
        raise GenbenchError(
            f"{what}: {path} holds clean-fid's {name.model} features, which no genbench "
            "extractor makes; use Inception statistics"
        )
    if extractor != "inception":
        raise GenbenchError(
            f"{what}: {path} holds clean-fid's Inception features; evaluate with the "
            f"inception extractor, not {extractor!r}"
        )
    want = CLEAN_FID_RESIZE.get(name.mode)
    if want is None:
        raise GenbenchError(
            f"{what}: {path} was made in clean-fid's {name.mode} mode (TensorFlow's resize), "
            "which genbench cannot reproduce; use a 'clean' or 'legacy_pytorch' file"
        )
    if (resize or "bilinear") != want:
        raise GenbenchError(
            f"{what}: {path} was made in clean-fid's {name.mode} mode; this evaluation resizes "
            f"{resize or 'bilinear'!r}: pass --resize {want} (evaluate.resize = {want!r})"
        )


def _clean_fid_features(path: Path) -> np.ndarray | None:
    """The ``feats`` of the ``_kid.npz`` beside clean-fid moments file ``path``, if any."""
    name = clean_fid_name(path)
    if name is None or name.kid:
        return None
    companion = path.with_name(path.name[: -len(".npz")] + "_kid.npz")
    if not companion.is_file():
        return None
    try:
        with np.load(companion) as data:
            return np.asarray(data["feats"], dtype=np.float32) if "feats" in data.files else None
    except Exception as exc:
        raise GenbenchError(f"cannot read clean-fid features {companion} ({exc})") from None


@dataclass(frozen=True)
class ReferenceStats:
    """Statistics of a set of real images (see the module docstring)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    """Images the moments were computed from; None when a file does not say (TTUR's)."""
    features: np.ndarray | None = None
    """The first feature vectors (n, D) float32, for KID and precision/recall."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where they came from: ``{"dataset", "split"}``, ``{"path"}`` or ``{"folder"}``."""

    @functools.cached_property
    def sha256(self) -> str:
        """``stats_sha256`` of ``mu`` and ``sigma``."""
        return stats_sha256(self.mu, self.sigma)

    @property
    def dim(self) -> int:
        return int(np.atleast_1d(self.mu).shape[0])

    def inputs(self) -> ReferenceInputs:
        """The form the metrics take."""
        return ReferenceInputs(self.mu, self.sigma, self.features)

    def protocol(self) -> dict[str, Any]:
        """The reference part of a metric value's protocol."""
        out: dict[str, Any] = {**self.source, "count": self.count, "stats_sha256": self.sha256}
        if self.features is not None:
            out["num_features"] = len(self.features)
        return out

    @classmethod
    def from_accumulated(
        cls, stats: FeatureStats, features: FeatureStore | None, source: dict[str, Any]
    ) -> ReferenceStats:
        """From streamed sums and (optionally) kept feature vectors."""
        kept = None
        if features is not None and len(features):
            kept = features.all().cpu().numpy().astype(np.float32)
        return cls(stats.mean(), stats.cov(), stats.count, kept, dict(source))

    @classmethod
    def from_npz(cls, path: Path, count: int | None = None) -> ReferenceStats:
        """Read a pytorch-fid style ``.npz`` (``mu``, ``sigma``, optional ``features``), or
        clean-fid's (moments with the ``feats`` of a ``_kid.npz`` beside them, or that
        ``_kid.npz`` alone); ``GenbenchError`` (one line) when it is missing, unreadable or
        lacks the moments."""
        path = Path(path)
        if not path.is_file():
            raise GenbenchError(f"reference statistics file not found: {path}")
        try:
            with np.load(path) as data:
                missing = {"mu", "sigma"} - set(data.files)
                if missing and "feats" in data.files:  # clean-fid's _kid.npz: the vectors
                    features = np.asarray(data["feats"], dtype=np.float32)
                    if features.ndim != 2 or len(features) < 2:
                        raise GenbenchError(f"{path}: feats is not a (N >= 2, D) array")
                    mu = features.mean(axis=0, dtype=np.float64)
                    sigma = np.cov(features.astype(np.float64), rowvar=False)
                    count = len(features) if count is None else count
                elif missing:
                    raise GenbenchError(
                        f"{path} lacks {', '.join(sorted(missing))}: not a statistics file "
                        "(pytorch-fid's .npz holds mu and sigma)"
                    )
                else:
                    mu = np.asarray(data["mu"], dtype=np.float64)
                    sigma = np.asarray(data["sigma"], dtype=np.float64)
                    features = data["features"] if "features" in data.files else None
            if features is None:
                features = _clean_fid_features(path)
        except GenbenchError:
            raise
        except Exception as exc:
            raise GenbenchError(f"cannot read statistics file {path} ({exc})") from None
        d = np.atleast_1d(mu).shape[0]
        if mu.shape != (d,) or sigma.shape != (d, d):
            raise GenbenchError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise GenbenchError(f"{path}: mu or sigma hold NaN or infinite values")
        source: dict[str, Any] = {"path": str(path)}
        clean = clean_fid_name(path)
        if clean is not None:
            source["clean_fid"] = {"mode": clean.mode, "model": clean.model}
        return cls(mu, sigma, count, features, source)

    def save(self, path: Path) -> None:
        """Write as pytorch-fid's ``.npz`` (plus ``features`` when kept), atomically."""
        extra = {} if self.features is None else {"features": self.features}
        save_npz(path, self.mu, self.sigma, **extra)


def check_finite(values: torch.Tensor, what: str) -> None:
    """``NonFinite`` naming ``what`` when a float tensor holds NaN or an infinity."""
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise NonFinite(f"{what} hold NaN or infinite values; no metric can be computed from them")


def accumulate(
    extractor: FeatureExtractor,
    batches: Iterable[torch.Tensor],
    max_features: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[FeatureStats, FeatureStore]:
    """Stream image batches through ``extractor`` into float64 sums and the first
    ``max_features`` feature vectors; ``on_batch(n)`` after each batch (progress bars)."""
    stats = FeatureStats(extractor.feature_dim, extractor.device)
    kept = FeatureStore(max_features)
    for batch in batches:
        check_finite(batch, "images")
        features, _ = extractor(batch, logits=False)
        stats.update(features)
        kept.update(features)
        if on_batch is not None:
            on_batch(len(batch))
    return stats, kept


def cache_key(extractor: FeatureExtractor, dataset: str, split: str, count: int) -> dict[str, Any]:
    """What reference statistics of a data set split depend on."""
    return {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "split": split,
        "count": count,
        **extractor.protocol(),
    }


class StatsCache:
    """Reference statistics on disk, one entry per ``cache_key`` (see the module docstring)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else stats_cache_dir()

    def path(self, key: dict[str, Any]) -> Path:
        """The ``.npz`` of ``key``'s entry; readable names, a hash of the whole key."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        # Files are named by their content's hash, not by any path a user gave.
        what = (
            f"{key['dataset']}-{key['split']}"
            if "dataset" in key
            else f"files-{key['content_sha256'][:12]}"
        )
        name = f"{what}-{key['extractor']}-{key['dims']}-{key['resize']}"
        return self.directory / f"{name}-{digest}.npz"

    def load(self, key: dict[str, Any], num_features: int = 0) -> ReferenceStats | None:
        """The entry for ``key`` with at least ``num_features`` feature vectors (or all the
        images'), trimmed to ``num_features``; None when absent, stale or unreadable."""
        path = self.path(key)
        sidecar = path.with_suffix(".json")
        if not (path.is_file() and sidecar.is_file()):
            return None
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            ref = ReferenceStats.from_npz(path, count=key["count"])
        except (GenbenchError, ValueError, OSError) as exc:
            print(f"bench: ignoring unreadable cache entry {path} ({exc})", file=sys.stderr)
            return None
        if meta.get("key") != key or meta.get("stats_sha256") != ref.sha256:
            return None
        stored = 0 if ref.features is None else len(ref.features)
        if num_features > stored and stored < key["count"]:
            return None  # more feature vectors wanted than this entry kept
        features = None
        if num_features and ref.features is not None:
            features = ref.features[:num_features]
        source = (
            {"dataset": key["dataset"], "split": key["split"]}
            if "dataset" in key
            else {"content_sha256": key["content_sha256"]}
        )
        return ReferenceStats(ref.mu, ref.sigma, key["count"], features, source)

    def save(self, key: dict[str, Any], ref: ReferenceStats) -> Path:
        """Write ``ref`` as ``key``'s entry (statistics first, then the sidecar that makes
        the entry valid); returns the ``.npz`` path."""
        path = self.path(key)
        ref.save(path)
        meta = {
            "key": key,
            "stats_sha256": ref.sha256,
            "num_features": 0 if ref.features is None else len(ref.features),
            "created": io.utc_now(),
        }
        io.write_json_atomic(path.with_suffix(".json"), meta)
        return path


Progress = Callable[[int], contextlib.AbstractContextManager[Callable[[int], None] | None]]
"""``progress(total)``: a context (a progress bar) whose value is called with each batch's
size, or gives None for no reporting."""


def dataset_reference(
    extractor: FeatureExtractor,
    dataset: TorchDataset,
    name: str,
    split: str,
    *,
    batch_size: int = 250,
    num_features: int = 0,
    cache: StatsCache | None = None,
    num_workers: int = 0,
    progress: Progress | None = None,
    force: bool = False,
    size: int | None = None,
) -> ReferenceStats:
    """Reference statistics of a data set split (``(image, label)`` pairs, images in
    [-1, 1]): from ``cache`` when it holds them (unless ``force``), else computed, stored
    there and returned. ``progress(count)`` is opened only while computing, so a cache hit
    shows no bar. ``size``: the images are first resized (bicubic) to ``size`` pixels, the
    resolution of upscaled samples."""
    count = len(dataset)  # type: ignore[arg-type]
    key = cache_key(extractor, name, split, count)
    resize = None
    if size is not None:
        first = dataset[0][0]  # type: ignore[index]
        resize = f"bicubic {first.shape[-1]}->{size}"
        key["resize"] = resize
    if cache is not None:
        if force:  # the entry is distrusted: invalid until rewritten
            cache.path(key).with_suffix(".json").unlink(missing_ok=True)
        else:
            hit = cache.load(key, num_features)
            if hit is not None:
                return hit
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with (progress or (lambda _: contextlib.nullcontext(None)))(count) as advance:
        batches = (images for images, _ in loader)
        if size is not None:
            batches = (_resized(images, size) for images in batches)
        stats, kept = accumulate(extractor, batches, max(num_features, 0), advance)
    info = {"dataset": name, "split": split, **({"resize": resize} if resize else {})}
    ref = ReferenceStats.from_accumulated(stats, kept, info)
    if cache is not None:
        cache.save(key, ref)
    return ref


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [-1, 1] resized (bicubic) to ``size`` pixels, kept in range."""
    out = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    return out.clamp(-1.0, 1.0)


def images_key(extractor: FeatureExtractor, content_sha256: str, count: int) -> dict[str, Any]:
    """What reference statistics of image files (a folder, a zip, a samples ``.npz``) depend
    on: their content, not their path."""
    return {
        "format": CACHE_FORMAT,
        "content_sha256": content_sha256,
        "count": count,
        **extractor.protocol(),
    }


def image_statistics(
    extractor: FeatureExtractor,
    images: Any,
    *,
    batch_size: int = 250,
    num_workers: int = 0,
    num_features: int = 10_000,
    force: bool = False,
    cache: StatsCache | None = None,
    progress: bool = False,
) -> tuple[ReferenceStats, Path | None, bool]:
    """``bench stats FOLDER`` (or a zip, a samples ``.npz``, an array): the statistics of an
    ``ImageSet`` (``genbench.eval.sources``), from the cache when files with the same
    content were measured under the same protocol, else computed (and cached when the
    images come from files). Returns them, the cache entry (None: not cacheable) and
    whether it was a cache hit. A progress bar is shown only while computing."""
    cache = cache or StatsCache()
    key = None
    if images.content is not None:
        key = images_key(extractor, images.content(), images.count)
        hit = None if force else cache.load(key, num_features)
        if hit is not None:
            return _with_source(hit, images.source), cache.path(key), True
        cache.path(key).with_suffix(".json").unlink(missing_ok=True)  # invalid until rewritten
    bar = counting(f"{Path(images.label).name} features", images.count) if progress else None
    with bar if bar is not None else contextlib.nullcontext(None) as advance:
        stats, kept = accumulate(
            extractor, images.batches(batch_size, num_workers), max(num_features, 0), advance
        )
    source = dict(images.source)
    if key is not None:
        source["content_sha256"] = key["content_sha256"]
    ref = ReferenceStats.from_accumulated(stats, kept, source)
    if key is None:
        return ref, None, False
    return ref, cache.save(key, ref), False


def _with_source(ref: ReferenceStats, source: dict[str, Any]) -> ReferenceStats:
    return dataclasses.replace(ref, source={**source, **ref.source})


def split_statistics(
    extractor: FeatureExtractor,
    dataset: str,
    split: str,
    *,
    data_root: Path | None = None,
    batch_size: int = 250,
    num_features: int = 10_000,
    force: bool = False,
    cache: StatsCache | None = None,
    progress: bool = False,
) -> tuple[ReferenceStats, Path, bool]:
    """``bench stats``: the statistics of a registered data set's split under
    ``extractor``'s protocol, from the cache or computed into it (recomputed with
    ``force``; a progress bar on stderr while computing when ``progress``). Returns them,
    the cache entry's ``.npz`` and whether it was already cached."""
    cache = cache or StatsCache()
    name = DATASETS.canonical(dataset, where="DATASET")
    data = DATASETS.get(name).load(split, data_root)
    name = DATASETS.get(name).cache_name(data_root)
    computed: list[int] = []

    def bar(total: int) -> contextlib.AbstractContextManager[Callable[[int], None] | None]:
        computed.append(total)
        return counting(f"{name} {split} features", total) if progress else contextlib.nullcontext()

    ref = dataset_reference(
        extractor,
        data,
        name,
        split,
        batch_size=batch_size,
        num_features=num_features,
        cache=cache,
        progress=bar,
        force=force,
    )
    key = cache_key(extractor, name, split, len(data))  # type: ignore[arg-type]
    return ref, cache.path(key), not computed
