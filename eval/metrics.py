"""Sample-quality metrics over extractor outputs, and the ``METRICS`` registry the CLI lists.

Each ``Metric`` descriptor says what it needs (reference moments or feature vectors, logits,
generated feature vectors) and computes a result dict from ``MetricInputs``; the
``Evaluator`` (``genbench.eval.evaluator``) gathers the inputs once for every requested
metric. Result dicts: ``fid`` {"value"}, ``is`` {"value", "std"}, ``kid`` {"value", "std"}
(mean and std over subsets), ``pr`` {"precision", "recall", "k"}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp

from genbench.core.errors import GenbenchError
from genbench.core.registry import Registry
from genbench.eval.stats import FeatureStats, FeatureStore, LogitStore

KID_SEED = 2020
"""Seed of the KID subset draws: torch-fidelity's default, so both give the same value on the
same features in the same order."""


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)), in float64.

    pytorch-fid's formula, with the trace of the matrix square root taken from symmetric
    eigenvalue problems instead of ``scipy.linalg.sqrtm``: the eigenvalues of sigma1 sigma2
    are those of the symmetric PSD matrix S sigma2 S with S = sigma1^(1/2), so the trace is
    the sum of their square roots. Two ``eigh`` calls cost about 3 s at 2048 dimensions on two
    CPU cores where ``sqrtm`` (a Schur decomposition) costs about 20 s; the value agrees with
    pytorch-fid's to rounding (to 1e-7 relative on singular 2048-d covariances from 400
    samples, tests/test_eval.py), and singular covariances need no eps offset.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    d = mu1.shape[0]
    # pytorch-fid only asserts these; a mismatched reference file deserves a clear message.
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise GenbenchError(
            f"feature statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
        raise GenbenchError("feature statistics hold NaN or infinite covariances")
    # Covariances are symmetric PSD up to rounding: eigenvalues a rounding below zero are 0.
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root @ sigma2 @ root
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


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


def _paired(
    generated: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets as float64 tensors on the generated side's device."""
    x = torch.as_tensor(generated).detach().to(torch.float64)
    y = torch.as_tensor(reference).detach().to(device=x.device, dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise GenbenchError(
            f"{what}: generated features {tuple(x.shape)} and reference features "
            f"{tuple(y.shape)} do not match"
        )
    return x, y


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between samples ``x`` and ``y`` (m, d each) under the cubic polynomial
    kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018, "Demystifying MMD GANs", KID)."""
    m, d = x.shape

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # One fused 1 + a b^T / d, cubed in place: the elementwise work rivals the matrix
        # product at small d, and this is 100 subsets of m x m.
        ones = a.new_ones(()).expand(len(a), len(b))
        return torch.addmm(ones, a, b.T, alpha=1 / d).pow_(3)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    # Within-sample sums drop the diagonal (k(a, a)); the cross term keeps every pair.
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (
        m * (m - 1)
    )
    return float(within - 2 * k_xy.sum() / (m * m))


KID_SUBSET_SIZE = 1000
"""KID's default subset size (torch-fidelity's and the KID paper's)."""


def kid_subset_size(n_generated: int, n_reference: int, subset_size: int | None) -> int:
    """The subset size KID uses for ``n_generated`` and ``n_reference`` feature vectors.

    A size the user set (``subset_size``) shrinks to the smaller side when a side has fewer.
    The default (``None``: ``KID_SUBSET_SIZE``) does not: fewer vectors than it is a one-line
    ``GenbenchError`` naming ``--kid-subset-size``, as torch-fidelity refuses, because a KID
    from silently smaller subsets is not comparable with the published 1000-image figures.
    """
    if subset_size is not None:
        return min(subset_size, n_generated, n_reference)
    fewest = min(n_generated, n_reference)
    if fewest < KID_SUBSET_SIZE:
        side = "generated" if n_generated <= n_reference else "reference"
        raise GenbenchError(
            f"KID: {fewest} {side} images (feature vectors kept) are fewer than its default "
            f"subset size of {KID_SUBSET_SIZE}; set --kid-subset-size N with N <= {fewest} "
            f"(evaluate.kid_subset_size in a spec), or evaluate at least {KID_SUBSET_SIZE} images"
        )
    return KID_SUBSET_SIZE


def kernel_inception_distance(
    generated: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int | None = None,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std over ``subsets`` random subsets of the
    unbiased MMD^2 with the cubic polynomial kernel, in float64.

    Each subset draws ``m = kid_subset_size(...)`` generated rows, then ``m`` reference rows,
    without replacement, from ``numpy.random.RandomState(seed)``: the original code's
    recipe, seeded.
    """
    x, y = _paired(generated, reference, "KID")
    m = kid_subset_size(len(x), len(y), subset_size)
    if m < 2:
        raise GenbenchError(f"KID needs at least 2 samples on each side, got {len(x)}, {len(y)}")
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        gen_idx = torch.from_numpy(rng.choice(len(x), m, replace=False)).to(x.device)
        ref_idx = torch.from_numpy(rng.choice(len(y), m, replace=False)).to(x.device)
        mmds.append(_mmd2_unbiased(x[gen_idx], y[ref_idx]))
    return float(np.mean(mmds)), float(np.std(mmds))


def _knn_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    # Each row's distance to itself (0) is the smallest, so the k-th neighbour is the
    # (k + 1)-th smallest distance.
    return torch.cat([torch.cdist(b, x).kthvalue(k + 1, dim=1).values for b in x.split(block)])


def _inside(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int
) -> torch.Tensor:
    """For each query row: is it inside (distance <= radius) any centre's ball?"""
    return torch.cat([(torch.cdist(b, centres) <= radii).any(dim=1) for b in queries.split(block)])


def precision_recall(
    generated: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    k: int = 3,
    block: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, section 2), in float64.

    Each set's manifold is the union of balls around its samples, each with the radius to the
    sample's k-th nearest neighbour in the same set. Precision: the fraction of generated
    samples inside the reference manifold; recall: the fraction of reference samples inside
    the generated manifold. ``block`` rows of distances are held at a time.
    """
    x, y = _paired(generated, reference, "precision/recall")
    if min(len(x), len(y)) <= k:
        raise GenbenchError(
            f"precision/recall with k = {k} needs more than {k} samples on each side, got "
            f"{len(x)} generated and {len(y)} reference"
        )
    precision = _inside(x, y, _knn_radii(y, k, block), block).double().mean()
    recall = _inside(y, x, _knn_radii(x, k, block), block).double().mean()
    return float(precision), float(recall)


@dataclass(frozen=True)
class MetricOptions:
    """Settings of the metrics, all recorded in the protocol of the metrics that use them."""

    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int | None = None
    """None: ``KID_SUBSET_SIZE``, and fewer images than it is an error (see
    ``kid_subset_size``)."""
    kid_seed: int = KID_SEED
    pr_k: int = 3
    max_features: int = 10_000
    """Feature vectors kept per side for KID and precision/recall (the first ones)."""


@dataclass(frozen=True)
class ReferenceInputs:
    """The real images' side: moments for FID, optionally feature vectors for KID / PR."""

    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor | np.ndarray | None = None


@dataclass(frozen=True)
class MetricInputs:
    """What the evaluator has gathered for the generated samples, and the reference."""

    stats: FeatureStats
    logits: LogitStore
    features: FeatureStore
    reference: ReferenceInputs | None
    """The real images' side, or None when no metric needs it."""
    options: MetricOptions = MetricOptions()


@dataclass(frozen=True)
class Metric:
    """A registered metric: what it needs and how to compute its result dict."""

    description: str
    compute: Callable[[MetricInputs], dict[str, float]]
    needs_reference: bool = False
    """Needs the reference moments (mu, sigma)."""
    needs_logits: bool = False
    needs_features: bool = False
    """Needs generated and reference feature vectors (a ``FeatureStore`` each)."""


def _reference(inputs: MetricInputs, what: str) -> ReferenceInputs:
    if inputs.reference is None:
        raise GenbenchError(f"{what} needs reference statistics")
    return inputs.reference


def _reference_features(inputs: MetricInputs, what: str) -> torch.Tensor | np.ndarray:
    features = _reference(inputs, what).features
    if features is None:
        raise GenbenchError(f"{what} needs the reference feature vectors, not only mu and sigma")
    return features


def _fid(inputs: MetricInputs) -> dict[str, float]:
    ref = _reference(inputs, "FID")
    return {"value": frechet_distance(inputs.stats.mean(), inputs.stats.cov(), ref.mu, ref.sigma)}


def _is(inputs: MetricInputs) -> dict[str, float]:
    mean, std = inception_score(inputs.logits.all(), inputs.options.is_splits)
    return {"value": mean, "std": std}


def _kid(inputs: MetricInputs) -> dict[str, float]:
    opts = inputs.options
    mean, std = kernel_inception_distance(
        inputs.features.all(),
        _reference_features(inputs, "KID"),
        opts.kid_subsets,
        opts.kid_subset_size,
        opts.kid_seed,
    )
    return {"value": mean, "std": std}


def _pr(inputs: MetricInputs) -> dict[str, float]:
    k = inputs.options.pr_k
    precision, recall = precision_recall(
        inputs.features.all(), _reference_features(inputs, "precision/recall"), k
    )
    return {"precision": precision, "recall": recall, "k": k}


METRICS: Registry[Metric] = Registry("metric", base=Metric, group="genbench.metrics")
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
METRICS.add(
    "kid",
    Metric(
        "Kernel Inception Distance: unbiased MMD^2, cubic polynomial kernel, over subsets",
        _kid,
        needs_features=True,
    ),
)
METRICS.add(
    "pr",
    Metric(
        "improved precision and recall of k-NN feature manifolds (k = 3)",
        _pr,
        needs_features=True,
    ),
)
