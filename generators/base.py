"""The generator plugin interface every genbench generator implements.

A generator is one class: a pydantic ``Config`` of its hyper-parameters (defaults = the
published CIFAR-10 setting), ``train_step`` (one optimiser update), ``sample`` (images in
[-1, 1] where every random draw comes from the sample's own seed), ``nfe`` and state dicts.
The harness owns everything around it: data, the loop, checkpoints, timing, evaluation.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from benchmarks.registry import Registry


class GeneratorConfig(BaseModel):
    """Base of every generator's hyper-parameters: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DataShape:
    """What a generator needs to know about its data: image shape and number of classes."""

    channels: int
    image_size: int
    num_classes: int = 0


@dataclass(frozen=True)
class Batch:
    """One training batch: images in [-1, 1] (N, C, H, W) and optional integer labels."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, parts: int) -> list[Batch]:
        """``parts`` micro-batches for gradient accumulation (sizes differ by at most one).

        Weight each micro-batch's loss by ``len(micro) / len(batch)`` so the accumulated
        gradient equals the full batch's.
        """
        if not 1 <= parts <= len(self):
            raise ValueError(f"cannot split a batch of {len(self)} into {parts} micro-batches")
        images = self.images.tensor_split(parts)
        labels = self.labels.tensor_split(parts) if self.labels is not None else [None] * parts
        return [Batch(x, y) for x, y in zip(images, labels, strict=True)]


class Generator(ABC):
    """One generative model: build from a config, train one step at a time, sample by seed."""

    Config: ClassVar[type[GeneratorConfig]]
    conditional: ClassVar[bool] = False  # True: ``sample`` uses class labels

    def __init__(self, config: GeneratorConfig, data: DataShape, device: torch.device) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}")
        self.config = config
        self.data = data
        self.device = torch.device(device)
        self.image_size: int = data.image_size  # a generator may train at another size

    @abstractmethod
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser update on ``batch``; returns losses for logging."""

    @abstractmethod
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        steps: int | str | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1], one per seed; image i depends only on ``seeds[i]`` (and label)."""

    @abstractmethod
    def nfe(self, steps: int | str | None = None) -> int:
        """Network evaluations per image for a sampling run with ``steps``."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks, by name; checkpoints and parameter counts are built from these."""

    def bits_per_dim(self, batch: Batch) -> torch.Tensor | None:
        """Per-image upper bound on the negative log-likelihood of ``batch`` in bits per
        dimension (likelihood models such as DDPM's VLB); None when the model has none."""
        return None

    def sampling_modules(self) -> list[str]:
        """Names of the networks used at sampling time (counted as the model's parameters)."""
        return list(self.modules())

    def num_parameters(self) -> int:
        """Parameters of the networks used for sampling."""
        mods = self.modules()
        return sum(p.numel() for n in self.sampling_modules() for p in mods[n].parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All network tensors, flat, keys prefixed with the network name."""
        out: dict[str, torch.Tensor] = {}
        for name, mod in self.modules().items():
            for key, value in mod.state_dict().items():
                out[f"{name}.{key}"] = value
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``state_dict``; unknown or missing keys are errors."""
        mods = self.modules()
        split: dict[str, dict[str, torch.Tensor]] = {name: {} for name in mods}
        for key, value in state.items():
            name, _, rest = key.partition(".")
            if name not in split:
                raise KeyError(f"state key {key!r} names no network of {type(self).__name__}")
            split[name][rest] = value
        for name, mod in mods.items():
            mod.load_state_dict(split[name], strict=True)

    def train(self, mode: bool = True) -> None:
        for mod in self.modules().values():
            mod.train(mode)

    def eval(self) -> None:
        self.train(False)


@contextlib.contextmanager
def gradient_sync(modules: Sequence[nn.Module], sync: bool) -> Iterator[None]:
    """Run a backward pass with (``sync``) or without DDP's gradient all-reduce.

    Accumulating micro-batches call this with ``sync=False`` for all but the last one, so
    a DDP-wrapped network all-reduces once per optimiser update. Plain modules ignore it.
    """
    with contextlib.ExitStack() as stack:
        if not sync:
            for mod in modules:
                no_sync = getattr(mod, "no_sync", None)
                if no_sync is not None:
                    stack.enter_context(no_sync())
        yield


GENERATORS: Registry[type[Generator]] = Registry("generator", base=Generator)


_STREAMS = 1 << 16


def seeded_randn(
    seeds: Sequence[int], shape: Sequence[int], device: torch.device, stream: int = 0
) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape); row i depends only on seeds[i].

    ``stream`` picks an independent sequence per purpose (latents, per-step noise, ...),
    so adding a new kind of draw never shifts the values of another.
    """
    if not 0 <= stream < _STREAMS:
        raise ValueError(f"stream must be in [0, {_STREAMS}), got {stream}")
    rows = []
    for seed in seeds:
        # Disjoint torch seeds per (seed, stream) pair, so streams never share values.
        g = torch.Generator().manual_seed(int(seed) * _STREAMS + stream)
        rows.append(torch.randn(tuple(shape), generator=g))
    if not rows:
        return torch.empty((0, *shape), device=device)
    return torch.stack(rows).to(device)
