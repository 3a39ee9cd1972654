"""``genbench.evaluate``: metrics between two sets of images in one call, like pytorch-fid's
command line or clean-fid's ``compute_fid`` (``bench eval`` is a shell over it).

The stages are small functions: open both sides (``genbench.eval.sources``) and check them
before any network loads; load the extractor; the real side's statistics (cached for a data
set split); stream the fake side through an ``Evaluator``; a typed ``EvalResult`` with every
value and the protocol it was measured under.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from genbench.core import collectives
from genbench.core.device import resolve_device
from genbench.core.errors import GenbenchError
from genbench.core.progress import counting
from genbench.data.datasets import DATASETS
from genbench.eval.evaluator import Evaluator
from genbench.eval.extractors import (
    EXTRACTORS,
    ExtractorOptions,
    FeatureExtractor,
    load_extractor,
)
from genbench.eval.metrics import METRICS, MetricOptions, frechet_distance
from genbench.eval.metrics import kid_subset_size as kid_size
from genbench.eval.reference import (
    ReferenceStats,
    StatsCache,
    accumulate,
    check_stats_protocol,
    dataset_reference,
)
from genbench.eval.sources import (
    Batches,
    DatasetSplit,
    ImageSet,
    Source,
    StatsFile,
    open_source,
)
from genbench.store.records import EvalResult, MetricValue, Protocol

Advance = Callable[[int], None]


@contextmanager
def _progress(show: bool, description: str, total: int | None) -> Iterator[Advance]:
    if not show:
        yield lambda n: None
        return
    with counting(description, total) as advance:
        yield advance


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """Canonical names of ``metrics``; an unknown one is a one-line usage error."""
    if not metrics:
        raise GenbenchError("metrics: give at least one metric, e.g. fid")
    return [METRICS.canonical(m, where="metrics") for m in metrics]


def check_sources(real: Source, fake: Source, metrics: list[str]) -> None:
    """Metrics the inputs cannot give, as a usage error before anything is computed."""
    if isinstance(fake, StatsFile):
        others = [m for m in metrics if m != "fid"]
        if others:
            raise GenbenchError(
                f"fake is a statistics file: only fid can be computed from it, not "
                f"{', '.join(others)}; pass images (a folder or a samples .npz)"
            )


def _split_images(split: DatasetSplit, data_root: Path | None) -> ImageSet:
    """A data set split as images to stream (the fake side of a real-vs-real comparison)."""
    dataset = DATASETS.get(split.dataset).load(split.split, data_root)
    batches = _split_images_of(dataset)

    def part(start: int, stop: int) -> Batches:
        return _split_images_of(Subset(dataset, range(start, stop)))

    source = {"dataset": split.dataset, "split": split.split}
    return ImageSet(source, len(dataset), batches, split.label, part)  # type: ignore[arg-type]


def _split_images_of(dataset: Any) -> Batches:
    def batches(batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        for images, _ in loader:
            yield images

    return batches


def reference_of(
    real: Source,
    extractor: FeatureExtractor,
    *,
    num_features: int,
    batch_size: int,
    num_workers: int,
    data_root: Path | None,
    progress: bool,
) -> ReferenceStats:
    """The real side's statistics, keeping ``num_features`` feature vectors (KID, PR): a
    data set split from the statistics cache (computed and cached when absent), a
    statistics file as it is, images streamed through ``extractor``."""
    if isinstance(real, StatsFile):
        return ReferenceStats.from_npz(real.path)
    if isinstance(real, DatasetSplit):
        registered = DATASETS.get(real.dataset)
        dataset = registered.load(real.split, data_root)
        return dataset_reference(
            extractor,
            dataset,
            registered.cache_name(data_root),
            real.split,
            batch_size=batch_size,
            num_features=num_features,
            cache=StatsCache(),
            progress=lambda total: _progress(progress, f"real {real.label}", total),
        )
    with _progress(progress, "real", real.count) as advance:
        batches = real.batches(batch_size, num_workers)
        stats, kept = accumulate(extractor, batches, num_features, advance)
    return ReferenceStats.from_accumulated(stats, kept, real.source)


def _stats_file_fid(fake: StatsFile, ref: ReferenceStats, extractor: FeatureExtractor) -> Any:
    fake_ref = ReferenceStats.from_npz(fake.path)
    value = frechet_distance(fake_ref.mu, fake_ref.sigma, ref.mu, ref.sigma)
    protocol = {**extractor.protocol(), "fake": fake_ref.protocol(), "reference": ref.protocol()}
    return {"fid": {"value": value}}, protocol


def evaluate(
    fake: Any,
    real: Any,
    metrics: Sequence[str] = ("fid", "is"),
    *,
    extractor: str = "inception",
    weights: str | Path | None = None,
    dims: int | None = None,
    resize: str | None = None,
    quantize: bool = True,
    tf32: bool = True,
    device: str = "auto",
    batch_size: int = 50,
    num_workers: int = 0,
    num_samples: int | None = None,
    seeds: Sequence[int] | None = None,
    data_root: str | Path | None = None,
    max_features: int = 10_000,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    pr_k: int = 3,
    progress: bool = True,
) -> EvalResult:
    """Metrics of ``fake`` against ``real`` (FID and IS by default).

    Each side is a folder, a ``.zip`` or ``.npz`` of images, a ``.npz`` of statistics, a
    data set split such as ``"cifar10:train"``, an image tensor or array, or a callable
    ``f(seeds) -> images`` drawn for ``num_samples`` seeds (or ``seeds``); see
    ``genbench.eval.sources``. ``extractor`` is ``"inception"`` (pytorch-fid's FID
    Inception: ``weights`` a local copy of its weights file, else the torch hub cache) or
    ``"digits"``; ``dims``, ``resize``, ``quantize`` and ``tf32`` are the protocol options
    of ``bench eval``. KID and precision/recall use the first ``max_features`` feature
    vectors of each side; ``kid_subset_size=None`` means 1000 and refuses fewer images (set
    it to use smaller subsets). Returns an ``EvalResult``: ``result.value("fid")``,
    ``result.metrics``, ``result.protocol``. Bad input is a one-line ``GenbenchError``
    raised before any network is loaded.
    """
    names = check_metrics(metrics)
    root = Path(data_root) if data_root is not None else None
    real_src = open_source(real, "real", num_samples=num_samples, seeds=seeds)
    fake_src = open_source(fake, "fake", num_samples=num_samples, seeds=seeds)
    check_sources(real_src, fake_src, names)
    loader = EXTRACTORS.get(extractor, where="extractor")
    if not loader.logits and any(METRICS.get(m).needs_logits for m in names):
        raise GenbenchError(
            f"metrics: is needs class logits, which the {extractor} extractor has not; use "
            "the inception extractor for it"
        )
    for side, src in (("real", real_src), ("fake", fake_src)):
        if isinstance(src, StatsFile):  # clean-fid's files say how they were made
            check_stats_protocol(src.path, EXTRACTORS.canonical(extractor), resize, side)
    for side, src in (("real", real_src), ("fake", fake_src)):
        if isinstance(src, ImageSet) and src.count < 2:
            raise GenbenchError(
                f"{side}: {src.count} image; the metrics compare distributions and need at "
                "least 2 images on each side"
            )
    options = MetricOptions(
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        pr_k=pr_k,
        max_features=max_features,
    )
    if "kid" in names:
        # Before any network loads: the counts are known from the sources.
        counts = [_count(src, root) for src in (fake_src, real_src)]
        kid_size(*(min(n, max_features) for n in counts), options.kid_subset_size)
    ext = load_extractor(
        extractor,
        resolve_device(device),
        Path(weights) if weights is not None else None,
        ExtractorOptions(dims, resize, quantize, tf32),
    )
    needs_features = any(METRICS.get(m).needs_features for m in names)
    rank, processes = collectives.rank(), collectives.world_size()
    # Under several processes (torch.distributed's default group) the reference is computed
    # once, by rank 0, and sent to the others; the fake side is sharded by whole batches.
    ref = collectives.from_rank0(
        lambda: reference_of(
            real_src,
            ext,
            num_features=max_features if needs_features else 0,
            batch_size=batch_size,
            num_workers=num_workers,
            data_root=root,
            progress=progress,
        )
    )
    if ref.dim != ext.feature_dim:
        raise GenbenchError(
            f"real holds {ref.dim}-d statistics, but the extractor gives "
            f"{ext.feature_dim}-d features; pass dims={ref.dim} (--dims {ref.dim})"
        )
    speed: dict[str, float] = {}
    if isinstance(fake_src, StatsFile):
        values, protocol = _stats_file_fid(fake_src, ref, ext)
    else:
        images = _split_images(fake_src, root) if isinstance(fake_src, DatasetSplit) else fake_src
        evaluator = Evaluator(ext, ref, names, options)
        mine, count = images.shard(rank, processes, batch_size)
        label = "fake" if processes == 1 else f"fake (rank 0's {count} of {images.count})"
        t0 = time.perf_counter()
        with _progress(progress and rank == 0, label, count) as advance:
            for batch in mine(batch_size, num_workers):
                evaluator.update(batch)
                advance(len(batch))
        seconds = time.perf_counter() - t0
        evaluator.all_reduce()
        seconds = max(collectives.gather(seconds))  # the slowest rank's time
        values = evaluator.compute()
        protocol = {**evaluator.protocol(), "fake": images.source}
        speed = {"fake_seconds": seconds, "fake_images_per_s": images.count / seconds}
    return EvalResult(
        real=real_src.label,
        fake=fake_src.label,
        metrics={name: MetricValue(**value) for name, value in values.items()},
        protocol=Protocol.model_validate(protocol),
        processes=processes,
        **speed,
    )


def _count(src: Source, root: Path | None) -> int:
    """How many images a source holds (a data set split: from its static facts)."""
    if isinstance(src, ImageSet):
        return src.count
    if isinstance(src, DatasetSplit):
        info = DATASETS.get(src.dataset).describe(root)
        return info.train_size if src.split == "train" else info.test_size
    return 0  # statistics only: check_sources has refused KID already


def metrics_table(result: EvalResult) -> str:
    """The values of ``result`` as a markdown table (what ``bench eval`` prints)."""
    lines = ["| metric | value |", "|---|---|"]
    for name, value in result.metrics.items():
        if name == "pr":
            lines.append(f"| precision (k={value.k}) | {value.precision:.6g} |")
            lines.append(f"| recall (k={value.k}) | {value.recall:.6g} |")
        elif value.std is not None:
            lines.append(f"| {name} | {value.value:.6g} ± {value.std:.6g} |")
        else:
            lines.append(f"| {name} | {value.value:.6g} |")
    note = kid_note(result.protocol)
    return "\n".join([*lines, *(["", f"note: {note}"] if note else [])])


KID_FEW = 100
"""Below this many images per subset, KID's unbiased estimate is noise (and can be < 0)."""


def kid_note(protocol: Protocol) -> str | None:
    """A warning when KID was computed from subsets too small to mean much."""
    size = protocol.kid_subset_size
    if size is None or size >= KID_FEW:
        return None
    return (
        f"KID from subsets of {size} images is dominated by noise and may be negative "
        f"(an unbiased estimate of a small number); use at least {KID_FEW}, ideally 1000"
    )
