"""Classifier-free guidance (Ho & Salimans 2021), shared by the diffusion generators: the
sampling settings that carry it, an extra "null" class that stands for "no label", label
dropout in training, and one guided mix at sampling time.

``guidance`` means one thing everywhere: the scale s of diffusers' ``guidance_scale``.
The guided prediction is uncond + s (cond - uncond): s = 1 is the conditional model, s = 0
the unconditional one, and Ho & Salimans' strength w (their eq. 6, (1 + w) cond - w uncond)
is s - 1. EDM's paper writes the same mix as D_null + s (D_label - D_null).
"""

from __future__ import annotations

import torch
from pydantic import Field

from genbench.generators.base import SampleSettings

GUIDANCE_HELP = (
    "classifier-free guidance scale s (diffusers' guidance_scale): 1 = the conditional model, "
    "0 = the unconditional one, s = 1 + w in Ho & Salimans' terms"
)


class GuidedSettings(SampleSettings):
    """Sampling settings of an iterative, class-conditional sampler."""

    steps: int | None = Field(None, ge=1, description="sampler steps; None = the config's")
    guidance: float | None = Field(None, ge=0, description=GUIDANCE_HELP)


CLASSIFIER_SCALE_HELP = (
    "classifier guidance scale (Dhariwal & Nichol): the gradient of log p(y | x_t) of the "
    "run's [classifier] times this is added to the score; 0 or unset = none"
)


class ClassifierGuidedSettings(GuidedSettings):
    """``GuidedSettings`` plus classifier guidance (``genbench.generators.classifier``)."""

    classifier_scale: float | None = Field(None, ge=0, description=CLASSIFIER_SCALE_HELP)


def check_classifier_scale(scale: float | None, num_classes: int) -> None:
    """``ValueError`` for classifier guidance on a data set without classes."""
    if scale is not None and num_classes < 2:
        raise ValueError(f"classifier_scale: {scale} needs a data set with class labels; drop it")


def classifier_guided(scale: float | None, labels: torch.Tensor | None) -> bool:
    """Whether sampling follows a classifier's gradient: a scale other than 0, and labels
    to guide towards (scale 0 is unguided sampling exactly: the classifier is not run)."""
    return scale is not None and scale != 0.0 and labels is not None


def is_guided(scale: float | None, conditional: bool) -> bool:
    """Whether sampling mixes conditional and unconditional predictions (two network
    evaluations per step): a conditional model with a scale other than 1."""
    return conditional and scale is not None and scale != 1.0


def check_guidance(scale: float | None, conditional: bool) -> None:
    """``ValueError`` for a guidance scale an unconditional model cannot follow."""
    if scale is not None and scale != 1.0 and not conditional:
        raise ValueError(
            f"guidance: {scale} needs a class-conditional model (a conditional config on a "
            "labelled data set); drop it or use 1"
        )


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + s (cond - uncond): the classifier-free guidance mix at scale s (see the
    module docstring)."""
    return torch.lerp(uncond, cond, scale)


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
