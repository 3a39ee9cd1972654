"""Streaming statistics of extractor outputs: feature moments for FID, logits for IS, a
bounded feature sample for KID and precision/recall.

``FeatureStats`` keeps only n, sum f and sum f f^T in float64, so batches can arrive in any
size and order, shards from several processes merge (or all-reduce) exactly, and no image or
feature is kept. ``to_npz`` writes the pytorch-fid statistics format (``mu``, ``sigma``).
``FeatureStore`` keeps the first ``limit`` feature vectors (KID and precision/recall need the
vectors themselves), ``LogitStore`` every logit (the Inception Score needs them all).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from genbench.core.errors import GenbenchError
from genbench.core.io import write_with_atomic


class FeatureStats:
    """Float64 running n, sum f (D,) and sum f f^T (D, D) of (N, D) feature batches.

    The sums live on ``device`` (give the extractor's, so accumulation stays where the
    features are computed); ``count``, ``sum`` and ``sum_outer`` are public so a distributed
    runner can all-reduce them.
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu") -> None:
        self.dim = dim
        self.count = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def device(self) -> torch.device:
        return self.sum.device

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, D)."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {tuple(features.shape)}")
        f = features.detach().to(device=self.device, dtype=torch.float64)
        self.count += f.shape[0]
        self.sum += f.sum(dim=0)
        self.sum_outer += f.T @ f

    def merge(self, other: FeatureStats) -> FeatureStats:
        """A new ``FeatureStats`` over the features of both ``self`` and ``other``."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge feature stats of dim {self.dim} and {other.dim}")
        merged = FeatureStats(self.dim, self.device)
        merged.count = self.count + other.count
        merged.sum = self.sum + other.sum.to(self.device)
        merged.sum_outer = self.sum_outer + other.sum_outer.to(self.device)
        return merged

    def mean(self) -> np.ndarray:
        """Feature mean (D,), float64."""
        if self.count < 1:
            raise GenbenchError("feature statistics are empty: no samples were evaluated")
        return (self.sum / self.count).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased feature covariance (D, D), float64; equals ``np.cov(f, rowvar=False)``."""
        if self.count < 2:
            raise GenbenchError(f"a covariance needs at least 2 samples, got {self.count}")
        mu = self.sum / self.count
        cov = (self.sum_outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return cov.cpu().numpy()

    def to_npz(self, path: Path) -> None:
        """Write ``mu`` and ``sigma`` to ``path`` (pytorch-fid's .npz format), atomically."""
        save_npz(path, self.mean(), self.cov())

    @staticmethod
    def from_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` from a pytorch-fid style .npz file (ours or pytorch-fid's)."""
        path = Path(path)
        if not path.is_file():
            raise GenbenchError(f"feature statistics file not found: {path}")
        with np.load(path) as data:
            missing = {"mu", "sigma"} - set(data.files)
            if missing:
                raise GenbenchError(f"{path} lacks {', '.join(sorted(missing))}")
            return data["mu"], data["sigma"]


def save_npz(path: Path, mu: np.ndarray, sigma: np.ndarray, **extra: np.ndarray) -> None:
    """Write ``mu`` and ``sigma`` (and any ``extra`` arrays, which pytorch-fid ignores) to
    ``path`` in pytorch-fid's format, atomically."""

    def write(tmp: Path) -> None:
        # A file object, not a name: np.savez would append ".npz" to the temp name.
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, **extra)

    write_with_atomic(Path(path), write)


def stats_sha256(mu: np.ndarray, sigma: np.ndarray) -> str:
    """sha256 of the float64 bytes of ``mu`` then ``sigma``: names a set of statistics in the
    protocol, whichever file or computation they came from."""
    digest = hashlib.sha256(np.ascontiguousarray(mu, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(sigma, dtype=np.float64).tobytes())
    return digest.hexdigest()


class FeatureStore:
    """The first ``limit`` feature vectors (N, D) in arrival order, on their own device.

    KID and precision/recall compare feature vectors, not moments, so a bounded sample of
    them is kept beside the sums; the bound keeps memory and the O(n^2) metrics in check.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self._batches: list[torch.Tensor] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def update(self, features: torch.Tensor) -> None:
        """Keep as many rows of ``features`` (N, D) as still fit under the limit."""
        room = self.limit - self._count
        if room <= 0:
            return
        kept = features.detach()[:room]
        self._batches.append(kept)
        self._count += kept.shape[0]

    def merge(self, other: FeatureStore) -> FeatureStore:
        """A new store holding ``self``'s vectors, then ``other``'s, up to ``self.limit``."""
        merged = FeatureStore(self.limit)
        for batch in (*self._batches, *other._batches):
            merged.update(batch)
        return merged

    def all(self) -> torch.Tensor:
        """The kept vectors (n, D), concatenated in arrival order."""
        if not self._batches:
            raise GenbenchError("no features were kept: no samples were evaluated")
        device = self._batches[0].device
        return torch.cat([b.to(device) for b in self._batches])


class LogitStore:
    """Keeps every logit batch (N, C) for the Inception Score, which needs all of them."""

    def __init__(self) -> None:
        self._batches: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor) -> None:
        """Append a batch of logits (N, C)."""
        self._batches.append(logits.detach())

    def __len__(self) -> int:
        return sum(b.shape[0] for b in self._batches)

    def merge(self, other: LogitStore) -> LogitStore:
        """A new store holding ``self``'s logits, then ``other``'s (shard order matters for
        the Inception Score's consecutive splits: merge shards in seed order)."""
        merged = LogitStore()
        merged._batches = [*self._batches, *other._batches]
        return merged

    def all(self) -> torch.Tensor:
        """All logits so far, concatenated in arrival order."""
        if not self._batches:
            raise GenbenchError("no logits were collected: no samples were evaluated")
        return torch.cat(self._batches)
