"""The generator plugin interface every genbench generator implements.

A generator is one class: a pydantic ``Config`` of its hyper-parameters (defaults = the
published CIFAR-10 setting), typed sampling ``Settings`` (checked when a spec loads),
``training`` (its optimisers and the phases of a step as data,
``genbench.generators.training``), ``sample`` (images in [-1, 1] where every random draw
comes from the sample's own seed, ``genbench.core.noise``), ``nfe`` and state dicts. The
harness owns everything around it: data, the training loop, checkpoints, timing,
evaluation.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from genbench.core.registry import Registry
from genbench.generators.training import Training


class GeneratorConfig(BaseModel):
    """Base of every generator's hyper-parameters: unknown keys, infinities and NaN are
    errors (``lr = inf`` is no learning rate); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def view(self) -> dict[str, Any]:
        """The settings a resolved spec shows (``bench run --dry-run``): every field that
        applies, defaults filled in; the output is itself a valid config."""
        return self.model_dump(mode="json", exclude_none=True)

    def notes(self) -> list[str]:
        """Lines about what the config loads from elsewhere (a pretrained network's
        layout), shown as comments beside the resolved spec; none by default."""
        return []


class SampleSettings(BaseModel):
    """A generator's sampling settings: what a spec's ``[sample] steps`` and ``guidance``
    (or ``bench speed --steps``) may set, typed per generator and validated when the spec
    loads, before any training. This base declares none, so a setting a generator does not
    have is a spec error, never silently ignored.

    ``guidance``, where a generator has it, always means the classifier-free guidance scale
    s of diffusers' ``guidance_scale``: 1 is the conditional model, 0 the unconditional one,
    s = 1 + w in Ho & Salimans' terms (``genbench.generators.guidance``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def given(self) -> dict[str, Any]:
        """The settings that were set (for specs and result records)."""
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class DataShape:
    """What a generator needs to know about its data: image shape and number of classes."""

    channels: int
    image_size: int
    num_classes: int = 0


@dataclass(frozen=True)
class TrajectoryPoint:
    """One network call of a sampling run: its noise level sigma (``x = x0 + sigma eps``
    scaled as the model's own process is) and the x0 it predicted, in [-1, 1] space."""

    sigma: float
    x0: torch.Tensor


@dataclass(frozen=True)
class Batch:
    """One training batch: images in [-1, 1] (N, C, H, W) and optional integer labels."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


class Trainable(ABC):
    """What the harness's ``Trainer`` trains: networks by name, their training as data, and
    state dicts. Every ``Generator`` is one; so is a guidance classifier
    (``genbench.generators.classifier``), which samples no images."""

    device: torch.device

    @abstractmethod
    def training(self) -> Training:
        """The optimisers and the phases of one training step; the harness's ``Trainer``
        runs them (the generator never calls ``backward`` or ``step`` itself)."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks, by name; checkpoints and parameter counts are built from these."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Training state beyond the networks and optimisers (a loss-aware timestep
        sampler's history), saved in the harness's training states; none by default."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``extra_state``."""
        if state:
            raise KeyError(f"{type(self).__name__} has no extra state, got {sorted(state)}")

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

    def import_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This generator's ``state_dict`` from the tensors of a checkpoint another code base
        wrote (a torch state dict, read with ``torch.load(weights_only=True)``);
        ``ValueError`` (one line: what does not fit and how to fix it) when it is no format
        the generator reads. None is read by default."""
        raise ValueError(
            f"not a genbench safetensors checkpoint, and generator {type(self).__name__} "
            "imports no other format"
        )

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


class Generator(Trainable):
    """One generative model: build from a config, declare its training, sample by seed."""

    Config: ClassVar[type[GeneratorConfig]]
    Settings: ClassVar[type[SampleSettings]] = SampleSettings

    def __init__(self, config: GeneratorConfig, data: DataShape, device: torch.device) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}")
        self.config = config
        self.data = data
        self.device = torch.device(device)
        self.image_size: int = data.image_size  # a generator may train at another size
        self.conditional: bool = type(self).is_conditional(config, data)
        """Whether ``sample`` uses class labels."""
        self.stage_seconds: dict[str, float] | None = None
        """Seconds ``sample`` has spent so far in each stage, for a generator made of
        stages (a cascade); None for one stage. The harness reads it around its calls."""
        self.classifier: Any = None
        """The run's guidance classifier (``genbench.generators.classifier``), given by the
        harness to a generator whose settings have ``classifier_scale``."""

    @classmethod
    def is_conditional(cls, config: GeneratorConfig, data: DataShape) -> bool:
        """Whether a generator of ``config`` on ``data`` is class-conditional (known before
        it is built, so sampling settings can be checked when the spec loads)."""
        return False

    @classmethod
    def check_settings(
        cls, config: GeneratorConfig, data: DataShape, settings: SampleSettings
    ) -> None:
        """Raise ``ValueError`` (naming the setting) when ``settings`` do not suit a
        generator of ``config`` on ``data``: a step string its sampler cannot parse,
        guidance on an unconditional model. The base accepts whatever its ``Settings``
        validated."""
        return None

    @classmethod
    def make_settings(
        cls,
        config: GeneratorConfig,
        data: DataShape,
        values: Mapping[str, Any] | None = None,
    ) -> SampleSettings:
        """``values`` as this generator's typed ``Settings``, checked against ``config`` and
        ``data``: pydantic's ``ValidationError`` for an unknown or mistyped setting,
        ``ValueError`` for one that does not suit the model."""
        settings = cls.Settings.model_validate(dict(values or {}))
        cls.check_settings(config, data, settings)
        return settings

    @abstractmethod
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: SampleSettings | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1], one per seed; image i depends only on ``seeds[i]`` (and its
        label). ``settings`` None means the generator's defaults (``Settings()``)."""

    def trajectory(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: SampleSettings | None = None,
    ) -> list[TrajectoryPoint] | None:
        """The denoising trajectory of ``sample``: the x0 prediction of every network call
        along the same sampling path, noisiest first, each with its noise level (the
        sigma of x = x0 + sigma eps, one unit for every diffusion model). None for a
        generator that predicts no x0 (a GAN)."""
        return None

    def guidance_classifier(self) -> Any:
        """The classifier that ``classifier_scale`` follows; ``ValueError`` without one."""
        if self.classifier is None:
            raise ValueError(
                "classifier_scale needs a guidance classifier: add a [classifier] section to "
                "the spec (bench run trains it), or drop classifier_scale"
            )
        # Its gradient is only meaningful on images of the size it learned.
        size = getattr(getattr(self.classifier, "data", None), "image_size", None)
        if size is not None and size != self.image_size:
            raise ValueError(
                f"classifier_scale: the guidance classifier learned {size} px images and this "
                f"model samples {self.image_size} px; sample at {size} px or drop classifier_scale"
            )
        return self.classifier

    @abstractmethod
    def nfe(self, settings: SampleSettings | None = None) -> int:
        """Network evaluations per image when sampling with ``settings`` (classifier-free
        guidance evaluates the network twice per step)."""

    def bits_per_dim(self, batch: Batch) -> torch.Tensor | None:
        """Per-image upper bound on the negative log-likelihood of ``batch`` in bits per
        dimension (likelihood models such as DDPM's VLB); None when the model has none."""
        return None


Watch = Callable[[float, torch.Tensor], None]
"""``watch(sigma, x0)``: told the noise level and the predicted x0 of every network call."""


class SteppedGenerator(Generator):
    """A generator whose sampler can report every network call's x0 (the diffusion models):
    ``sample`` and ``trajectory`` are one code path, ``_sample``, with and without a watch,
    so a trajectory is exactly the path that ``sample`` takes."""

    @abstractmethod
    def _sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None,
        settings: SampleSettings | None,
        watch: Watch | None = None,
    ) -> torch.Tensor:
        """``sample``; ``watch`` (if given) sees every network call, noisiest first."""

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: SampleSettings | None = None,
    ) -> torch.Tensor:
        return self._sample(seeds, labels, settings)

    @torch.no_grad()
    def trajectory(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: SampleSettings | None = None,
    ) -> list[TrajectoryPoint]:
        points: list[TrajectoryPoint] = []
        self._sample(seeds, labels, settings, lambda s, x0: points.append(TrajectoryPoint(s, x0)))
        return points


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (one draw per image from the
    global RNG): the usual CIFAR-10 training augmentation."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip.view(-1, *([1] * (images.dim() - 1))), images.flip(-1), images)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run the block with ``modules`` in eval mode and give each its own mode back after.

    Sampling needs it: dropout or batch statistics would make an image depend on more than
    its seed, and sampling in the middle of training must not leave the nets in eval mode.
    """
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


GENERATORS: Registry[type[Generator]] = Registry(
    "generator", base=Generator, group="genbench.generators"
)
