"""What a generator declares about its training; the harness's ``Trainer`` runs it.

After StyleGAN2-ADA's training loop and EDM's loss classes, training is data: a generator
names its optimisers (the networks each one trains, how it is built, its learning-rate
schedule and gradient clipping) and the phases of one training step. A phase draws every
random tensor of an update for the whole batch (``draw``), then gives the per-sample loss of
one micro-batch from its slice of those draws (``loss``). The harness cuts the draws into
micro-batches (and, under DDP, into the ranks' shards), runs forward and backward with the
gradient all-reduce on the last micro-batch only, clips, sets the learning rate and steps.
So one update gives the same gradient whatever the number of micro-batches or processes,
and the generator never calls ``backward``, ``step``, ``zero_grad`` or ``no_sync``.

A GAN has several phases (DDGAN: D, its lazy R1 every 15 steps, G), a diffusion model one.
Phases that follow one another on the same optimiser make one update together (DDGAN's R1
joins D's update, as in its authors' code).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Nets = Mapping[str, nn.Module]
"""The generator's networks by name, as the harness runs them (wrapped in DDP when several
processes train): losses call these, never the generator's own attributes."""

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
"""Builds an optimiser over parameters, e.g. ``functools.partial(torch.optim.Adam, lr=...)``."""


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of update s (1-based) as a multiple of the base rate.

    Linear warm-up over ``warmup_steps`` updates or ``warmup_images`` training images
    (lr x min(1, s / warmup); Ho et al. 2020 appendix B, Karras et al. 2022), then either
    ``constant`` or a ``cosine`` decay from the base rate to ``floor`` over the training run
    (lr_p = floor + (base - floor) (1 + cos(pi p)) / 2 at progress p in [0, 1), as
    ``CosineAnnealingLR``).
    """

    warmup_steps: float = 0.0
    warmup_images: float = 0.0
    decay: Literal["constant", "cosine"] = "constant"
    floor: float = 0.0

    def __post_init__(self) -> None:
        if min(self.warmup_steps, self.warmup_images, self.floor) < 0:
            raise ValueError("warm-up lengths and the floor cannot be negative")
        if self.warmup_steps and self.warmup_images:
            raise ValueError("give warmup_steps or warmup_images, not both")

    def lr(self, base: float, step: int, images: int, progress: float) -> float:
        """The rate of update ``step`` (1-based) after ``images`` training images (this
        update's included), ``progress`` = the fraction of the run done before it."""
        if self.decay == "cosine":
            p = min(max(progress, 0.0), 1.0)
            rate = self.floor + (base - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))
        else:
            rate = base
        if self.warmup_steps:
            rate *= min(1.0, step / self.warmup_steps)
        elif self.warmup_images:
            rate *= min(1.0, images / self.warmup_images)
        return rate


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser: the networks it trains, how to build it, its schedule and clipping."""

    modules: tuple[str, ...]
    build: OptimizerFactory
    lr: float
    schedule: LRSchedule = field(default_factory=LRSchedule)
    grad_clip: float = 0.0
    """Largest global gradient norm of an update (0 = no clipping)."""


@dataclass(frozen=True)
class Loss:
    """The loss of one micro-batch: ``value`` per sample (n,), whose batch mean is the
    objective; per-sample values to log (n,) by name; per-sample values (n,) for the
    phase's ``observe`` (detached), if it has one."""

    value: torch.Tensor
    logs: Mapping[str, torch.Tensor] = field(default_factory=dict)
    observed: torch.Tensor | None = None


Draw = Callable[[Any], Any]
"""``Batch`` -> the phase's draws for the whole batch: a ``Batch``, a tensor, or a dataclass
or dict whose tensors have the batch as their first dimension (``take`` slices them)."""

LossFn = Callable[[Nets, Any], Loss]
"""(networks, one micro-batch of draws) -> ``Loss``."""


@dataclass(frozen=True)
class Phase:
    """One part of a training step.

    ``interval``: the phase runs on steps 1, 1 + interval, ... (15 = DDGAN's lazy R1).
    ``group``: micro-batches hold whole groups of this many samples (a discriminator's
    minibatch-std groups), so a cut batch sees the same groups as the whole one.
    ``observe``: called after the update with the whole batch's draws and the per-sample
    ``Loss.observed`` values of every micro-batch and process, in batch order: a
    loss-aware timestep sampler learns from them.
    """

    name: str
    optimizer: str
    draw: Draw
    loss: LossFn
    interval: int = 1
    group: int = 1
    observe: Callable[[Any, torch.Tensor], None] | None = None

    def __post_init__(self) -> None:
        if self.interval < 1 or self.group < 1:
            raise ValueError(f"phase {self.name}: interval and group must be >= 1")

    def due(self, step: int) -> bool:
        """Whether the phase runs in update ``step`` (1-based)."""
        return (step - 1) % self.interval == 0


@dataclass(frozen=True)
class Training:
    """A generator's whole training: its optimisers by name and the phases of one step."""

    optimizers: Mapping[str, OptimizerSpec]
    phases: Sequence[Phase]

    def __post_init__(self) -> None:
        owner: dict[str, str] = {}
        for name, opt in self.optimizers.items():
            for module in opt.modules:
                if module in owner:
                    raise ValueError(
                        f"network {module} is in optimisers {owner[module]} and {name}"
                    )
                owner[module] = name
        for phase in self.phases:
            if phase.optimizer not in self.optimizers:
                raise ValueError(f"phase {phase.name} steps unknown optimiser {phase.optimizer}")
        if not self.phases:
            raise ValueError("a training needs at least one phase")


def batch_size_of(draws: Any) -> int:
    """The number of samples in ``draws`` (the first dimension of its first tensor)."""
    for value in _values(draws):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(f"draws of type {type(draws).__name__} hold no batched tensor")


def take(draws: Any, rows: slice) -> Any:
    """The samples ``rows`` of ``draws``: every tensor with a batch dimension is sliced,
    everything else kept."""

    def cut(value: Any) -> Any:
        return value[rows] if isinstance(value, torch.Tensor) and value.dim() > 0 else value

    if isinstance(draws, torch.Tensor):
        return cut(draws)
    if isinstance(draws, Mapping):
        return {k: cut(v) for k, v in draws.items()}
    if dataclasses.is_dataclass(draws) and not isinstance(draws, type):
        return dataclasses.replace(
            draws, **{f.name: cut(getattr(draws, f.name)) for f in dataclasses.fields(draws)}
        )
    raise TypeError(f"cannot slice draws of type {type(draws).__name__}")


def _values(draws: Any) -> list[Any]:
    if isinstance(draws, torch.Tensor):
        return [draws]
    if isinstance(draws, Mapping):
        return list(draws.values())
    if dataclasses.is_dataclass(draws) and not isinstance(draws, type):
        return [getattr(draws, f.name) for f in dataclasses.fields(draws)]
    return []


def group_slices(n: int, parts: int, group: int = 1) -> list[slice]:
    """``parts`` consecutive slices of ``n`` samples made of whole groups of ``group`` (the
    last group may be smaller), as even as possible."""
    groups = -(-n // group)
    if not 1 <= parts <= groups:
        unit = "samples" if group == 1 else f"groups of {group} samples"
        raise ValueError(f"a batch of {n} cannot be cut into {parts} parts of whole {unit}")
    base, extra = divmod(groups, parts)
    bounds = [min(n, group * (i * base + min(i, extra))) for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]
