"""Streaming evaluation of generated images against reference statistics.

Stages, each a small function: images -> extractor (features, logits) -> ``FeatureStats`` /
``LogitStore`` / ``FeatureStore`` -> metrics. Batches stream through and are dropped, and the
statistics are float64 sums, so results do not depend on the batch size; evaluators over
disjoint shards of the samples ``merge`` into the evaluator of the whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from genbench.core import collectives
from genbench.core.errors import GenbenchError
from genbench.eval.extractors import FeatureExtractor
from genbench.eval.metrics import (
    METRICS,
    Metric,
    MetricInputs,
    MetricOptions,
    ReferenceInputs,
    kid_subset_size,
)
from genbench.eval.reference import ReferenceStats, accumulate, check_finite
from genbench.eval.stats import FeatureStats, FeatureStore, LogitStore

Reference = ReferenceStats | FeatureStats | tuple[np.ndarray, np.ndarray]
"""Real images' statistics: ``ReferenceStats`` (moments, count, maybe feature vectors and
their source), ``FeatureStats`` sums, or pytorch-fid's ``(mu, sigma)``."""


def _resolve_metrics(names: list[str]) -> dict[str, Metric]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise GenbenchError(
            f"unknown metric {unknown[0]!r}; valid choices: {', '.join(METRICS.choices())}"
        )
    return {METRICS.canonical(n): METRICS.get(n) for n in names}


def _reference_inputs(
    reference: Reference | None, dim: int, needs_features: bool
) -> ReferenceInputs:
    if reference is None:
        raise GenbenchError("FID, KID and precision/recall need reference statistics")
    if isinstance(reference, ReferenceStats):
        ref = reference.inputs()
    elif isinstance(reference, FeatureStats):
        ref = ReferenceInputs(reference.mean(), reference.cov())
    else:
        mu, sigma = (np.asarray(a, dtype=np.float64) for a in reference)
        ref = ReferenceInputs(mu, sigma)
    if ref.mu.shape != (dim,) or ref.sigma.shape != (dim, dim):
        raise GenbenchError(
            f"reference statistics have shape mu {ref.mu.shape}, sigma {ref.sigma.shape}; the "
            f"extractor gives {dim}-d features (check --dims)"
        )
    if needs_features and ref.features is None:
        raise GenbenchError(
            "KID and precision/recall need reference feature vectors, but the reference "
            "holds only mu and sigma; compute it from images (a data set split or a folder)"
        )
    return ref


class Evaluator:
    """Accumulates generated images batch by batch and computes the requested metrics.

    ``reference`` is the real images' statistics (see ``Reference``); it may be None when no
    requested metric needs it (e.g. IS only). KID and precision/recall need a
    ``ReferenceStats`` with feature vectors. ``options`` holds the metrics' settings.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        reference: Reference | None,
        metrics: list[str],
        options: MetricOptions | None = None,
    ) -> None:
        self.extractor = extractor
        self.metrics = _resolve_metrics(metrics)
        self.options = options or MetricOptions()
        needed = self.metrics.values()
        self.keep_logits = any(m.needs_logits for m in needed)
        self.keep_features = any(m.needs_features for m in needed)
        dim = extractor.feature_dim
        self.reference: ReferenceInputs | None = None
        if any(m.needs_reference or m.needs_features for m in needed):
            self.reference = _reference_inputs(reference, dim, self.keep_features)
        self.reference_protocol = (
            reference.protocol() if isinstance(reference, ReferenceStats) else None
        )
        self.stats = FeatureStats(dim, extractor.device)
        self.logits = LogitStore()
        self.features = FeatureStore(self.options.max_features if self.keep_features else 0)

    def update(self, images: torch.Tensor) -> None:
        """Stream a batch of generated images (N, 1 or 3, H, W), float in [-1, 1] or uint8;
        ``NonFinite`` when one holds NaN or an infinity (a diverged model: quantised, NaN
        would turn into black pixels and a finite, meaningless FID)."""
        check_finite(images, "generated images")
        features, logits = self.extractor(images, logits=self.keep_logits)
        self.accumulate(features, logits)

    def accumulate(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Add extractor outputs of a batch (for callers that ran the extractor themselves)."""
        self.stats.update(features)
        self.features.update(features)
        if self.keep_logits:
            if logits is None:
                raise ValueError("the Inception Score needs the logits of every batch")
            self.logits.update(logits)

    def merge(self, other: Evaluator) -> Evaluator:
        """An evaluator over ``self``'s samples, then ``other``'s (same setup); merge shards
        in seed order so the Inception Score's splits and the kept features match one pass."""
        if other.metrics.keys() != self.metrics.keys() or other.options != self.options:
            raise ValueError("cannot merge evaluators with different metrics or options")
        merged = object.__new__(Evaluator)
        merged.__dict__.update(self.__dict__)
        merged.stats = self.stats.merge(other.stats)
        merged.logits = self.logits.merge(other.logits)
        merged.features = self.features.merge(other.features)
        return merged

    def all_reduce(self) -> None:
        """Combine, in place, the shards every process of ``torch.distributed``'s default
        group streamed (nothing without one): n, sum f and sum f f^T are all-reduced in
        float64; the logits and kept feature vectors are gathered in rank order, which is
        seed order when rank r evaluated the r-th contiguous part of the seeds. Every rank
        must call it (it is a collective), whether or not it saw any image."""
        if not collectives.active():
            return
        stats = self.stats
        count = torch.tensor([float(stats.count)], dtype=torch.float64, device=stats.device)
        for tensor in (count, stats.sum, stats.sum_outer):
            collectives.all_sum(tensor)
        stats.count = int(count.item())
        # Ragged per rank (a rank may have had no image), so gathered as objects, on the CPU.
        mine = (
            [b.cpu() for b in self.logits._batches],
            [b.cpu() for b in self.features._batches],
        )
        parts = collectives.gather(mine)
        logits, features = LogitStore(), FeatureStore(self.features.limit)
        for rank_logits, rank_features in parts:
            for batch in rank_logits:
                logits.update(batch)
            for batch in rank_features:
                features.update(batch)
        self.logits, self.features = logits, features

    def compute(self) -> dict[str, dict[str, float]]:
        """``{metric name: result dict}`` over every image so far (``genbench.eval.metrics``)."""
        inputs = MetricInputs(self.stats, self.logits, self.features, self.reference, self.options)
        return {name: metric.compute(inputs) for name, metric in self.metrics.items()}

    def protocol(self) -> dict[str, Any]:
        """The facts a metric value must be stored with to be comparable: the extractor's
        (``FeatureExtractor.protocol``), the sample count, the metrics' settings and, when
        known, the reference's (``ReferenceStats.protocol``)."""
        opts = self.options
        out: dict[str, Any] = {
            **self.extractor.protocol(),
            "num_samples": self.stats.count,
            "is_splits": opts.is_splits,
        }
        if self.keep_features:
            out.update(max_features=opts.max_features, num_features=len(self.features))
        if "kid" in self.metrics:
            n_ref = 0 if self.reference is None else len(self.reference.features)
            size = kid_subset_size(len(self.features), n_ref, opts.kid_subset_size)
            out.update(kid_subsets=opts.kid_subsets, kid_subset_size=size, kid_seed=opts.kid_seed)
        if "pr" in self.metrics:
            out["pr_k"] = opts.pr_k
        if "is" in self.metrics and getattr(self.extractor, "is_logits", None):
            out["is_logits"] = self.extractor.is_logits
        if self.reference_protocol is not None:
            out["reference"] = self.reference_protocol
        return out


def reference_stats(
    extractor: FeatureExtractor,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 256,
) -> FeatureStats:
    """Feature statistics of real images in [-1, 1] (or uint8): one (N, C, H, W) tensor,
    split into ``batch_size`` chunks, or any iterable of such batches (streamed, never held
    at once)."""
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    return accumulate(extractor, batches)[0]
