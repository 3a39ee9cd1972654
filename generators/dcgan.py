"""DCGAN (Radford, Metz, Chintala 2015), sized for 16, 32 and 64 pixel images.

Generator: a latent z (nz x 1 x 1) through transposed convolutions that double the
resolution from 4x4, batch norm + ReLU, tanh output. Discriminator: the mirror image with
strided convolutions, batch norm (not on the first layer) + LeakyReLU(0.2), one logit.
Weights N(0, 0.02), batch-norm scales N(1, 0.02); Adam with beta1 = 0.5 (paper, section 4);
non-saturating generator loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
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
    GeneratorConfig,
    SampleSettings,
    eval_mode,
)
from genbench.generators.training import Loss, Nets, OptimizerSpec, Phase, Training

SUPPORTED_SIZES = (16, 32, 64)


class DCGANConfig(GeneratorConfig):
    """DCGAN hyper-parameters; defaults are the CIFAR-10 setting of genbench's source
    comparison of a GAN, improved diffusion and DDGAN (64 px, G lr 1.6e-4, D lr 1.25e-4), not
    Radford et al.'s (2e-4 for both, section 4): set ``g_lr = d_lr = 2e-4`` for theirs."""

    image_size: Literal[16, 32, 64] | None = Field(
        None, description="training/sampling resolution; None = the data set's native size"
    )
    nz: int = Field(100, ge=1, description="latent dimension")
    ngf: int = Field(64, ge=1, description="generator base width")
    ndf: int = Field(64, ge=1, description="discriminator base width")
    g_lr: float = Field(1.6e-4, gt=0)
    d_lr: float = Field(1.25e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


def _num_upsamplings(size: int) -> int:
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"DCGAN supports image sizes {SUPPORTED_SIZES}, got {size}")
    return int(math.log2(size // 4))


class DCGANGenerator(nn.Module):
    """z (N, nz, 1, 1) -> image (N, nc, size, size) in [-1, 1]."""

    def __init__(self, nz: int, ngf: int, nc: int, size: int) -> None:
        super().__init__()
        n = _num_upsamplings(size)
        width = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DCGANDiscriminator(nn.Module):
    """image (N, nc, size, size) -> logit (N,)."""

    def __init__(self, ndf: int, nc: int, size: int) -> None:
        super().__init__()
        n = _num_upsamplings(size)
        width = ndf
        layers: list[nn.Module] = [
            nn.Conv2d(nc, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
        ]
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _init_weights(module: nn.Module) -> None:
    # Radford et al. section 4: all weights from N(0, 0.02).
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class LatentDraws:
    """A D update's draws: the real images and G's latents."""

    real: torch.Tensor
    z: torch.Tensor


@GENERATORS.register("dcgan", aliases=("gan",))
class DCGAN(Generator):
    """Unconditional DCGAN: one generator pass per image, so it has no sampling settings
    (``steps`` or ``guidance`` in a spec is an error); class labels are not used."""

    Config = DCGANConfig

    def __init__(self, config: DCGANConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.image_size = config.image_size or data.image_size
        self.G = DCGANGenerator(config.nz, config.ngf, data.channels, self.image_size).to(
            self.device
        )
        self.D = DCGANDiscriminator(config.ndf, data.channels, self.image_size).to(self.device)
        self.G.apply(_init_weights)
        self.D.apply(_init_weights)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def sampling_modules(self) -> list[str]:
        return ["G"]

    # ------------------------------------------------------------------ training

    def training(self) -> Training:
        """Adam for D and for G (beta1 0.5, paper section 4); per step a D update on real
        images and G's images, then a G update with the non-saturating loss. Each phase
        draws its own latents from the global torch RNG (seeded by the harness), as
        StyleGAN2-ADA's loop does."""
        c = self.config
        adam = functools.partial(torch.optim.Adam, betas=(c.beta1, c.beta2))
        return Training(
            optimizers={
                "D": OptimizerSpec(("D",), functools.partial(adam, lr=c.d_lr), c.d_lr),
                "G": OptimizerSpec(("G",), functools.partial(adam, lr=c.g_lr), c.g_lr),
            },
            phases=[
                Phase("D", "D", self._draw, self._d_loss),
                Phase("G", "G", self._draw_latents, self._g_loss),
            ],
        )

    def _draw(self, batch: Batch) -> LatentDraws:
        z = torch.randn(len(batch), self.config.nz, 1, 1, device=self.device)
        return LatentDraws(batch.images.to(self.device), z)

    def _draw_latents(self, batch: Batch) -> torch.Tensor:
        return torch.randn(len(batch), self.config.nz, 1, 1, device=self.device)

    def _d_loss(self, nets: Nets, d: LatentDraws) -> Loss:
        with torch.no_grad():
            fake = nets["G"](d.z)
        logits_real, logits_fake = nets["D"](d.real), nets["D"](fake)
        # -log D(x) - log(1 - D(G(z))) per sample, as BCE with logits: softplus(-l), softplus(l).
        value = F.softplus(-logits_real) + F.softplus(logits_fake)
        return Loss(
            value,
            {
                "loss_d": value.detach(),
                "d_real": torch.sigmoid(logits_real).detach(),
                "d_fake": torch.sigmoid(logits_fake).detach(),
            },
        )

    def _g_loss(self, nets: Nets, z: torch.Tensor) -> Loss:
        # Non-saturating loss: maximise log D(G(z)) (Goodfellow et al. 2014, section 3).
        value = F.softplus(-nets["D"](nets["G"](z)))
        return Loss(value, {"loss_g": value.detach()})

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: SampleSettings | None = None,
    ) -> torch.Tensor:
        z = seeded_randn(seeds, (self.config.nz, 1, 1), self.device)
        # batch-norm running statistics: an image never depends on its batch
        with eval_mode(self.G):
            return self.G(z).clamp_(-1.0, 1.0)

    def nfe(self, settings: SampleSettings | None = None) -> int:
        return 1
