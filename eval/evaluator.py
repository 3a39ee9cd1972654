"""Streaming evaluation of generated images against reference statistics.

Stages, each a small function: images -> extractor (features, logits) -> ``FeatureStats`` /
``LogitStore`` -> metrics. Batches stream through and are dropped, and the statistics are
float64 sums, so results do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from benchmarks.errors import GenbenchError
from eval.extractors import FeatureExtractor
from eval.metrics import METRICS, Metric, MetricInputs
from eval.stats import FeatureStats, LogitStore

Reference = FeatureStats | tuple[np.ndarray, np.ndarray]


def _resolve_metrics(names: list[str]) -> dict[str, Metric]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise GenbenchError(
            f"unknown metric {unknown[0]!r}; valid choices: {', '.join(METRICS.choices())}"
        )
    return {METRICS.canonical(n): METRICS.get(n) for n in names}


def _reference_moments(reference: Reference | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if reference is None:
        raise GenbenchError("FID needs reference statistics, but none were given")
    if isinstance(reference, FeatureStats):
        mu, sigma = reference.mean(), reference.cov()
    else:
        mu, sigma = (np.asarray(a, dtype=np.float64) for a in reference)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise GenbenchError(
            f"reference statistics have shape mu {mu.shape}, sigma {sigma.shape}; the "
            f"extractor gives {dim}-d features"
        )
    return mu, sigma


class Evaluator:
    """Accumulates generated images batch by batch and computes the requested metrics.

    ``reference`` is the real images' statistics (``FeatureStats`` or pytorch-fid's
    ``(mu, sigma)``); it may be None when no requested metric needs it (e.g. IS only).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        reference: Reference | None,
        metrics: list[str],
        is_splits: int = 10,
    ) -> None:
        self.extractor = extractor
        self.metrics = _resolve_metrics(metrics)
        self.is_splits = is_splits
        needs_ref = any(m.needs_reference for m in self.metrics.values())
        dim = extractor.feature_dim
        self.reference = _reference_moments(reference, dim) if needs_ref else None
        self.keep_logits = any(m.needs_logits for m in self.metrics.values())
        self.stats = FeatureStats(dim, extractor.device)
        self.logits = LogitStore()

    def update(self, images: torch.Tensor) -> None:
        """Stream a batch of generated images (N, 1 or 3, H, W) in [-1, 1]."""
        features, logits = self.extractor(images)
        self.stats.update(features)
        if self.keep_logits:
            self.logits.update(logits)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{metric name: {"value": ..., and e.g. "std": ...}}`` over every image so far."""
        inputs = MetricInputs(self.stats, self.logits, self.reference, self.is_splits)
        return {name: metric.compute(inputs) for name, metric in self.metrics.items()}

    def protocol(self) -> dict[str, Any]:
        """The facts a metric value must be stored with to be comparable."""
        ext = self.extractor
        return {
            "extractor": ext.id,
            "weights_sha256": ext.weights_sha256,
            "resize": ext.resize,
            "input_size": ext.input_size,
            "dtype": "float32",
            "feature_dim": ext.feature_dim,
            "num_samples": self.stats.count,
            "is_splits": self.is_splits,
        }


def reference_stats(
    extractor: FeatureExtractor,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 256,
) -> FeatureStats:
    """Feature statistics of real images in [-1, 1]: one (N, C, H, W) tensor, split into
    ``batch_size`` chunks, or any iterable of such batches (streamed, never held at once)."""
    stats = FeatureStats(extractor.feature_dim, extractor.device)
    batches = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    for batch in batches:
        stats.update(extractor(batch)[0])
    return stats
