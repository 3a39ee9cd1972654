"""Cascaded generation (Ho et al. 2022): any registered generator samples at a low resolution
(the base stage), and a super-resolution diffusion model conditioned on the upsampled
low-resolution image adds the detail (the SR stage).

The base trains on the data downsampled (antialiased bilinear) to ``base_size`` with its own
optimisers, phases and recipe, all prefixed ``base_``; the SR model trains on the same batch:
x_t = sqrt(a(t)) x0 + sqrt(1 - a(t)) eps on the continuous cosine schedule, predicting x0
(MSE) from x_t concatenated with the condition. The condition is the real low-resolution image
upsampled (bilinear) with Gaussian conditioning augmentation: cond = up(low) + s z with s
uniform in [0, ``aug_max``], s given to the network as an extra input (their section 4.2);
sampling conditions on the base's sample at s = ``sample_aug``. The SR sampler is DDIM (eta 0)
over ``sample_steps`` evenly spaced times from 1 to 0, so an SR network that returns its
condition gives back the upsampled base image exactly at s = 0. NFE and time add up over the
stages (``stage_seconds``).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genbench.core.noise import seeded_randn
from genbench.generators.base import (
    GENERATORS,
    Batch,
    DataShape,
    Generator,
    GeneratorConfig,
    SampleSettings,
    eval_mode,
)
from genbench.generators.songunet import SongUNetConfig
from genbench.generators.training import (
    Loss,
    LRSchedule,
    Nets,
    OptimizerSpec,
    Phase,
    Training,
)

PREFIX = "base_"
SR_NOISE, AUG_NOISE = 2**31, 2**31 + 1
"""Noise streams of the SR stage (far above any base generator's streams)."""


class CascadeConfig(SongUNetConfig):
    """The base stage (a registered generator and its config) at ``base_size`` pixels, and
    the SR diffusion model (defaults: a DDPM++ of EDM's CIFAR-10 width, T continuous, 50
    DDIM steps; 16 -> 32 px for CIFAR-10 as in the issue's setting)."""

    base: str = Field("edm", description="registered generator of the low-resolution stage")
    base_config: dict[str, Any] = Field(default_factory=dict, description="its config")
    base_size: int = Field(16, ge=4, description="resolution of the base stage")
    aug_max: float = Field(0.5, ge=0, description="largest conditioning-augmentation std")
    sample_aug: float = Field(0.1, ge=0, description="conditioning-augmentation std sampled at")
    sample_steps: int = Field(50, ge=1, le=10_000, description="SR DDIM steps")
    lr: float = Field(1e-4, gt=0)
    grad_clip: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _base(self) -> CascadeConfig:
        if self.base not in GENERATORS or GENERATORS.canonical(self.base) == "cascade":
            names = ", ".join(n for n in GENERATORS.names() if n != "cascade")
            raise ValueError(
                f"base {self.base!r} is no generator a cascade can start from: {names}"
            )
        GENERATORS.get(self.base).Config.model_validate(self.base_config)  # errors name it
        return self

    def base_generator_config(self) -> GeneratorConfig:
        return GENERATORS.get(self.base).Config.model_validate(self.base_config)


class CascadeSettings(SampleSettings):
    """SR DDIM steps (default: the config's ``sample_steps``)."""

    steps: int | None = Field(None, ge=1, le=10_000, description="SR DDIM steps")


@dataclass(frozen=True)
class SRDraws:
    x0: torch.Tensor
    low: torch.Tensor  # the real image at the base resolution
    t: torch.Tensor  # (N,) in [0, 1]
    noise: torch.Tensor
    aug: torch.Tensor  # (N,) conditioning-augmentation std
    aug_noise: torch.Tensor


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """The cosine schedule's alpha-bar at continuous t in [0, 1] (Nichol & Dhariwal), 1 at
    0 and 0 at 1."""
    s = 0.008
    t64 = t.to(torch.float64)
    f = torch.cos((t64 + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    # exactly 1 and 0 at the ends: the last DDIM step then returns the x0 prediction itself
    f = torch.where(t64 <= 0, 1.0, torch.where(t64 >= 1, 0.0, f))
    return f.clamp(0.0, 1.0).to(t.dtype)


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize to ``size`` pixels (the base stage's data)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling to ``size`` pixels (the SR stage's condition)."""
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


@GENERATORS.register("cascade")
class Cascade(Generator):
    """A base generator at low resolution followed by a conditional SR diffusion model."""

    Config = CascadeConfig
    Settings = CascadeSettings

    @classmethod
    def _base_shape(cls, config: CascadeConfig, data: DataShape) -> DataShape:
        return DataShape(data.channels, config.base_size, data.num_classes)

    @classmethod
    def check_settings(
        cls, config: CascadeConfig, data: DataShape, settings: SampleSettings
    ) -> None:
        if config.base_size >= data.image_size:  # found when the spec loads, not at build
            raise ValueError(
                f"config.base_size {config.base_size} must be below the data's {data.image_size} px"
            )

    @classmethod
    def is_conditional(cls, config: CascadeConfig, data: DataShape) -> bool:
        base = GENERATORS.get(config.base)
        return base.is_conditional(config.base_generator_config(), cls._base_shape(config, data))

    def __init__(self, config: CascadeConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        if config.base_size >= data.image_size:
            raise ValueError(
                f"base_size {config.base_size} must be below the data's {data.image_size} px"
            )
        base_cls = GENERATORS.get(config.base)
        self.base = base_cls(
            config.base_generator_config(), self._base_shape(config, data), self.device
        )
        self.sr = config.songunet(
            self.image_size, 2 * data.channels, data.channels, augment_dim=1
        ).to(self.device)
        self.stage_seconds: dict[str, float] = {"base": 0.0, "sr": 0.0}
        """Seconds spent in each stage by ``sample`` so far (the harness records them)."""

    # ---------------------------------------------------------------- networks

    def modules(self) -> dict[str, nn.Module]:
        return {**{PREFIX + k: v for k, v in self.base.modules().items()}, "sr": self.sr}

    def sampling_modules(self) -> list[str]:
        return [PREFIX + k for k in self.base.sampling_modules()] + ["sr"]

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v for k, v in self.base.extra_state().items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.base.load_extra_state({k.removeprefix(PREFIX): v for k, v in state.items()})

    def sr_x0(
        self,
        xt: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        aug: torch.Tensor,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """The SR network's x0 from x_t, the (augmented) condition, t and the aug level."""
        net = self.sr if net is None else net
        return net(torch.cat([xt, cond], dim=1), t, None, aug.view(-1, 1))

    # ---------------------------------------------------------------- training

    def training(self) -> Training:
        inner = self.base.training()
        optimizers = {
            PREFIX + name: OptimizerSpec(
                tuple(PREFIX + m for m in spec.modules),
                spec.build,
                spec.lr,
                spec.schedule,
                spec.grad_clip,
            )
            for name, spec in inner.optimizers.items()
        }
        c = self.config
        adam = functools.partial(torch.optim.Adam, lr=c.lr)
        optimizers["sr"] = OptimizerSpec(("sr",), adam, c.lr, LRSchedule(), c.grad_clip)
        phases = [self._base_phase(p) for p in inner.phases]
        phases.append(Phase("sr", "sr", self.draw_sr, self.loss_sr))
        return Training(optimizers=optimizers, phases=phases)

    def _base_phase(self, phase: Phase) -> Phase:
        """The base's phase on the downsampled batch, its networks found under the prefix."""
        size = self.base.image_size  # the base's own training size (base_size by default)
        names = list(self.base.modules())

        def draw(batch: Batch) -> Any:
            return phase.draw(Batch(downsample(batch.images, size), batch.labels))

        def loss(nets: Nets, draws: Any) -> Loss:
            out = phase.loss({k: nets[PREFIX + k] for k in names}, draws)
            logs = {PREFIX + k: v for k, v in out.logs.items()}
            return Loss(out.value, logs, out.observed)

        return Phase(
            PREFIX + phase.name,
            PREFIX + phase.optimizer,
            draw,
            loss,
            phase.interval,
            phase.group,
            phase.observe,
        )

    def draw_sr(self, batch: Batch) -> SRDraws:
        x0 = batch.images.to(self.device)
        n = x0.shape[0]
        low = downsample(x0, self.base.image_size)
        t = torch.rand(n, device=self.device)
        aug = torch.rand(n, device=self.device) * self.config.aug_max
        return SRDraws(x0, low, t, torch.randn_like(x0), aug, torch.randn_like(x0))

    def loss_sr(self, nets: Nets, d: SRDraws) -> Loss:
        a = alpha_bar(d.t)
        xt = _rows(a.sqrt(), d.x0) * d.x0 + _rows((1 - a).sqrt(), d.x0) * d.noise
        cond = upsample(d.low, self.image_size) + _rows(d.aug, d.x0) * d.aug_noise
        value = (self.sr_x0(xt, cond, d.t, d.aug, nets["sr"]) - d.x0).pow(2).mean(dim=(1, 2, 3))
        return Loss(value, {"loss_sr": value.detach()})

    # ---------------------------------------------------------------- sampling

    def _steps(self, settings: CascadeSettings | None) -> int:
        steps = settings.steps if settings is not None else None
        return steps or self.config.sample_steps

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: CascadeSettings | None = None,
    ) -> torch.Tensor:
        t0 = time.perf_counter()
        low = self.base.sample(seeds, labels)
        if low.is_cuda:
            torch.cuda.synchronize(low.device)
        t1 = time.perf_counter()
        out = self.super_resolve(seeds, low, self._steps(settings))
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        t2 = time.perf_counter()
        self.stage_seconds["base"] += t1 - t0
        self.stage_seconds["sr"] += t2 - t1
        return out

    @torch.no_grad()
    def super_resolve(self, seeds: Sequence[int], low: torch.Tensor, steps: int) -> torch.Tensor:
        """The SR stage: DDIM from noise (by seed) to x0, conditioned on ``low`` upsampled
        and augmented at ``sample_aug`` (its noise by seed too)."""
        shape = (self.data.channels, self.image_size, self.image_size)
        n = len(seeds)
        aug = torch.full((n,), self.config.sample_aug, device=self.device)
        cond = upsample(low.to(self.device), self.image_size)
        if self.config.sample_aug > 0:
            cond = cond + self.config.sample_aug * seeded_randn(
                seeds, shape, self.device, AUG_NOISE
            )
        x = seeded_randn(seeds, shape, self.device, SR_NOISE)
        times = torch.linspace(1.0, 0.0, steps + 1, device=self.device)
        with eval_mode(self.sr):
            for t, t_next in itertools.pairwise(times):
                a, a_next = alpha_bar(t), alpha_bar(t_next)
                x0 = self.sr_x0(x, cond, t.expand(n), aug).clamp(-1.0, 1.0)
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt().clamp(min=1e-8)
                x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x.clamp(-1.0, 1.0)

    def nfe(self, settings: CascadeSettings | None = None) -> int:
        """Network evaluations per image: the base's, then one per SR step."""
        return self.base.nfe() + self._steps(settings)

    def num_parameters(self) -> int:
        return self.base.num_parameters() + sum(p.numel() for p in self.sr.parameters())
