"""Sample-quality metrics over extractor outputs, and the ``METRICS`` registry the CLI lists.

Each ``Metric`` descriptor says what it needs (reference statistics, logits) and computes a
``{"value": ..., ...}`` dict from ``MetricInputs``; ``eval.evaluator.Evaluator`` gathers the
inputs once for every requested metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy.special import logsumexp

from benchmarks.errors import GenbenchError
from benchmarks.registry import Registry
from eval.stats import FeatureStats, LogitStore


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), by pytorch-fid."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    d = mu1.shape[0]
    # pytorch-fid only asserts these; a mismatched reference file deserves a clear message.
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise GenbenchError(
            f"feature statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    with warnings.catch_warnings():
        # pytorch-fid 0.3.0 passes sqrtm(disp=False), deprecated since SciPy 1.16; not ours.
        warnings.filterwarnings("ignore", "The `disp` argument", DeprecationWarning)
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) of class logits (N, C): mean and std over
    ``splits`` consecutive chunks of exp(mean_x KL(p(y|x) || p(y))), with p(y) the chunk's
    mean posterior, as in the paper's original code. Computed in float64."""
    log_p = torch.log_softmax(torch.as_tensor(logits).detach().cpu().double(), dim=1).numpy()
    n = log_p.shape[0]
    if n < splits:
        raise GenbenchError(f"the Inception Score needs at least {splits} samples, got {n}")
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_py = logsumexp(part, axis=0) - np.log(part.shape[0])  # log of the mean posterior
        kl = np.sum(np.exp(part) * (part - log_py), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass(frozen=True)
class MetricInputs:
    """What the evaluator has gathered for the generated samples."""

    stats: FeatureStats
    logits: LogitStore
    reference: tuple[np.ndarray, np.ndarray] | None
    """``(mu, sigma)`` of the real images, or None when no metric needs it."""
    is_splits: int = 10


@dataclass(frozen=True)
class Metric:
    """A registered metric: what it needs and how to compute its result dict."""

    description: str
    compute: Callable[[MetricInputs], dict[str, float]]
    needs_reference: bool = False
    needs_logits: bool = False


def _fid(inputs: MetricInputs) -> dict[str, float]:
    if inputs.reference is None:
        raise GenbenchError("FID needs reference statistics")
    mu_ref, sigma_ref = inputs.reference
    return {"value": frechet_distance(inputs.stats.mean(), inputs.stats.cov(), mu_ref, sigma_ref)}


def _is(inputs: MetricInputs) -> dict[str, float]:
    mean, std = inception_score(inputs.logits.all(), inputs.is_splits)
    return {"value": mean, "std": std}


METRICS: Registry[Metric] = Registry("metric", base=Metric)
METRICS.add(
    "fid",
    Metric(
        "Frechet distance between feature Gaussians of generated and reference images",
        _fid,
        needs_reference=True,
    ),
)
METRICS.add(
    "is",
    Metric("Inception Score over the extractor's class posterior", _is, needs_logits=True),
)
