"""Cold diffusion (Bansal et al. 2022): a restoration network R(x_t, t) ~ x0 trained to
invert a degradation D(x0, t) that need not be Gaussian noise, and the paper's two samplers.

Degradations, each with D(x0, 0) = x0 and a fixed point at t = T:

- ``blur``: circular Gaussian blur, applied in closed form in the Fourier domain, its standard
  deviation rising geometrically from ``blur_sigma_min`` pixels (t = 1) to the image size;
  at T only the mean survives: every image becomes its own channel-mean colour.
- ``downsample``: area-downsampling to a side shrinking geometrically from the image size
  to 1 pixel at T, then nearest-neighbour upsampling back (the same fixed point: the mean).
- ``mask``: the first ceil(HW t / T) pixels of one fixed random order are replaced by the
  image's own random fill ``z`` (at T: only fill).
- ``noise`` (the control): sqrt(a_t) x0 + sqrt(1 - a_t) z on the cosine schedule.

``z`` is each image's own N(0, I) draw (mask, noise): in training from the global RNG, in
generation from the seed. Generation starts at x_T: the fill or noise ``z`` for mask and noise;
for blur and downsampling a flat image of a colour drawn (per seed) from a Gaussian fitted to
the training images' channel means, as the paper draws x_T from a model of those means.

Samplers (settings ``sampler``): ``naive`` (their algorithm 1) x_{t-1} = D(R(x_t, t), t - 1);
``improved`` (algorithm 2) x_{t-1} = x_t - D(x0_hat, t) + D(x0_hat, t - 1), which recovers x0
exactly when R is exact, whatever D. The network is EDM's DDPM++ (``SongUNet``) with t / T as
its noise input; the loss is the paper's L1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genbench.core.noise import seeded_randn
from genbench.generators.base import (
    GENERATORS,
    Batch,
    DataShape,
    Generator,
    SampleSettings,
    eval_mode,
    random_hflip,
)
from genbench.generators.songunet import SongUNetConfig
from genbench.generators.training import Loss, LRSchedule, Nets, OptimizerSpec, Phase, Training

Degradation = Literal["blur", "downsample", "mask", "noise"]
Restorer = Callable[[torch.Tensor, int], torch.Tensor]


class ColdConfig(SongUNetConfig):
    """Cold diffusion's degradation, network and training (defaults: the paper's CIFAR-10
    blur setting in spirit, 50 steps; the network is a DDPM++ of EDM's CIFAR-10 width)."""

    degradation: Degradation = "blur"
    num_steps: int = Field(50, ge=1, le=10_000, description="T, degradation steps")
    blur_sigma_min: float = Field(0.3, gt=0, description="blur std at t = 1, in pixels")
    mask_seed: int = Field(0, ge=0, description="seed of the fixed pixel order of masking")
    sampler: Literal["naive", "improved"] = "improved"
    lr: float = Field(2e-5, gt=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    hflip: bool = True


class ColdSettings(SampleSettings):
    """Which of the paper's samplers (default: the config's)."""

    sampler: Literal["naive", "improved"] | None = None


@dataclass(frozen=True)
class TrainingDraws:
    x0: torch.Tensor
    t: torch.Tensor  # (N,) steps in 1..T
    z: torch.Tensor  # each image's own fill / noise


class ColourPrior(nn.Module):
    """Running sums of the training images' channel means: a Gaussian over flat colours,
    kept as buffers so that checkpoints carry it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("outer", torch.zeros(channels, channels, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, images: torch.Tensor) -> None:
        means = images.to(torch.float64).mean(dim=(2, 3))
        self.count += means.shape[0]
        self.total += means.sum(0)
        self.outer += means.T @ means

    def colours(self, z: torch.Tensor) -> torch.Tensor:
        """Colours (N, C) from standard normal draws ``z`` (N, C)."""
        n = max(float(self.count), 1.0)
        mean = self.total / n
        cov = self.outer / n - torch.outer(mean, mean)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        chol = torch.linalg.cholesky(cov + 1e-6 * eye)
        return (mean + z.to(torch.float64) @ chol.T).to(z.dtype)


class Degrade:
    """D(x0, t; z) for whole batches at one step t, or per-image steps."""

    def __init__(self, config: ColdConfig, data: DataShape) -> None:
        self.kind, self.T, self.size = config.degradation, config.num_steps, data.image_size
        n = self.size
        # blur: std rising geometrically to the image size (only the mean survives that)
        ratio = (n / config.blur_sigma_min) ** (1 / max(self.T - 1, 1))
        self.blur_sigma = [0.0] + [config.blur_sigma_min * ratio**i for i in range(self.T)]
        # downsampling: side n -> 1 geometrically
        self.sides = [max(1, round(n ** (1 - t / self.T))) for t in range(self.T + 1)]
        # masking: one fixed pixel order
        order = torch.randperm(n * n, generator=torch.Generator().manual_seed(config.mask_seed))
        self.rank = torch.empty(n * n, dtype=torch.long)
        self.rank[order] = torch.arange(n * n)
        # noise: the cosine schedule's alpha-bar, 1 at t = 0 and 0 at T
        steps = torch.arange(self.T + 1, dtype=torch.float64) / self.T
        abar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        self.abar = (abar / abar[0]).clamp(0.0, 1.0)
        self.abar[-1] = 0.0

    def __call__(self, x0: torch.Tensor, t: int, z: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = D(x0, t; z), the same t for the whole batch."""
        if t == 0:
            return x0
        if self.kind == "blur":
            return self._blur(x0, t)
        if self.kind == "downsample":
            side = self.sides[t]
            small = F.adaptive_avg_pool2d(x0, side)
            return F.interpolate(small, size=x0.shape[-2:], mode="nearest")
        assert z is not None, "mask and noise degradations need each image's own z"
        if self.kind == "mask":
            kept = (self.rank.to(x0.device) >= math.ceil(self.size**2 * t / self.T)).view(
                1, 1, self.size, self.size
            )
            return torch.where(kept, x0, z)
        a = float(self.abar[t])
        return math.sqrt(a) * x0 + math.sqrt(1.0 - a) * z

    def per_image(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t for per-image steps ``t`` (training batches)."""
        out = torch.empty_like(x0)
        for step in t.unique().tolist():
            rows = t == step
            out[rows] = self(x0[rows], int(step), z[rows])
        return out

    def _blur(self, x: torch.Tensor, t: int) -> torch.Tensor:
        n = x.shape[-1]
        f = torch.fft.fftfreq(n, device=x.device, dtype=torch.float64)
        f2 = f[:, None] ** 2 + f[None, :] ** 2
        if t >= self.T:  # exactly the mean: the fixed point
            gain = (f2 == 0).to(torch.float64)
        else:
            gain = torch.exp(-2 * math.pi**2 * self.blur_sigma[t] ** 2 * f2)
        spectrum = torch.fft.fft2(x.to(torch.float64)) * gain
        return torch.fft.ifft2(spectrum).real.to(x.dtype)


@GENERATORS.register("cold")
class ColdDiffusion(Generator):
    """Cold diffusion: a restoration network inverting a deterministic degradation."""

    Config = ColdConfig
    Settings = ColdSettings

    def __init__(self, config: ColdConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.degrade = Degrade(config, data)
        self.net = config.songunet(self.image_size, data.channels, data.channels).to(self.device)
        self.prior = ColourPrior(data.channels).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "prior": self.prior}

    def sampling_modules(self) -> list[str]:
        # The colour prior holds statistics, not weights: no EMA, no parameters to count.
        return ["net"]

    def restore(self, x: torch.Tensor, t: torch.Tensor | int, net: nn.Module | None = None):
        """R(x_t, t): the network's estimate of x0 (t / T is its noise input)."""
        steps = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])
        return (self.net if net is None else net)(x, steps / self.config.num_steps)

    # ---------------------------------------------------------------- training

    def training(self) -> Training:
        c = self.config
        adam = functools.partial(torch.optim.Adam, lr=c.lr)
        schedule = LRSchedule(warmup_steps=c.warmup_steps)
        return Training(
            optimizers={"net": OptimizerSpec(("net",), adam, c.lr, schedule, c.grad_clip)},
            phases=[Phase("main", "net", self.draw, self.loss)],
        )

    def draw(self, batch: Batch) -> TrainingDraws:
        x0 = batch.images.to(self.device)
        if self.config.hflip:
            x0 = random_hflip(x0)
        self.prior.observe(x0)  # once per update: draw sees the whole batch
        t = torch.randint(1, self.config.num_steps + 1, (x0.shape[0],), device=self.device)
        return TrainingDraws(x0, t, torch.randn_like(x0))

    def loss(self, nets: Nets, d: TrainingDraws) -> Loss:
        """The paper's L1 between R(D(x0, t), t) and x0, per image."""
        xt = self.degrade.per_image(d.x0, d.t, d.z)
        value = (self.restore(xt, d.t, nets["net"]) - d.x0).abs().mean(dim=(1, 2, 3))
        return Loss(value, {"loss": value.detach()})

    # ---------------------------------------------------------------- sampling

    def _sampler(self, settings: ColdSettings | None) -> str:
        chosen = settings.sampler if settings is not None else None
        return chosen or self.config.sampler

    def start(self, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_T, z) of each seed: the degradation's own randomness, drawn from the seed."""
        shape = (self.data.channels, self.image_size, self.image_size)
        z = seeded_randn(seeds, shape, self.device, stream=0)
        if self.config.degradation in ("mask", "noise"):
            return z, z
        colour = self.prior.colours(seeded_randn(seeds, (self.data.channels,), self.device, 1))
        return colour[:, :, None, None].expand(-1, -1, *shape[1:]).contiguous(), z

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: ColdSettings | None = None,
    ) -> torch.Tensor:
        return self._sample(seeds, settings)

    def _sample(self, seeds: Sequence[int], settings: ColdSettings | None) -> torch.Tensor:
        x, z = self.start(seeds)
        with eval_mode(self.net):

            def restore(x: torch.Tensor, t: int) -> torch.Tensor:
                return self.restore(x, t).clamp(-1.0, 1.0)

            x = run_sampler(
                self._sampler(settings), self.degrade, restore, x, z, self.config.num_steps
            )
        return x.clamp(-1.0, 1.0)

    def nfe(self, settings: ColdSettings | None = None) -> int:
        return self.config.num_steps


def run_sampler(
    kind: str, degrade: Degrade, restore: Restorer, x: torch.Tensor, z: torch.Tensor, T: int
) -> torch.Tensor:
    """From x_T down to x_0: ``naive`` (algorithm 1) or ``improved`` (algorithm 2)."""
    for t in range(T, 0, -1):
        x0 = restore(x, t)
        if kind == "naive":
            x = degrade(x0, t - 1, z)
        else:
            x = x - degrade(x0, t, z) + degrade(x0, t - 1, z)
    return x
