"""Class labels for classifier-free guidance (Ho & Salimans 2021), shared by the diffusion
generators: an extra "null" class stands for "no label", training drops labels to it, and
sampling mixes the conditional and null predictions."""

from __future__ import annotations

import torch


def net_labels(
    labels: torch.Tensor | None, n: int, null_label: int, device: torch.device
) -> torch.Tensor:
    """The class ids the network sees for ``n`` images: ``labels``, or the null class for
    all of them when there are none."""
    if labels is None:
        return torch.full((n,), null_label, device=device, dtype=torch.long)
    return labels.to(device, torch.long)


def drop_labels(labels: torch.Tensor, p: float, null_label: int) -> torch.Tensor:
    """Replace each label by the null class with probability ``p`` (Ho & Salimans 2021,
    algorithm 1), drawn from the global RNG; no draw at all when ``p`` is 0."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape[0], device=labels.device) < p
    return labels.masked_fill(drop, null_label)


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w) cond - w uncond (Ho & Salimans 2021, eq. 6): w = 0 is the conditional model.

    EDM's scale s (D_null + s (D_cond - D_null)) is the same mix with w = s - 1.
    """
    return (1.0 + w) * cond - w * uncond
