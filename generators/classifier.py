"""A noise-conditional classifier p(y | x_sigma) for classifier guidance (Dhariwal & Nichol
2021, section 4), trained by the harness's ``Trainer`` like any generator.

One classifier serves every diffusion model because it sees one parameterisation of noise:
the variance-preserving image ``x_vp = (x0 + sigma eps) / sqrt(1 + sigma^2)`` together with
its noise level ``sigma`` (the VE sigma of ``x_vp / sqrt(alpha-bar) = x0 + sigma eps``). A
DDPM's x_t is exactly that image at ``sigma_t = sqrt(1 / alpha-bar_t - 1)``; an EDM sample x
at sigma is ``sqrt(1 + sigma^2) x_vp``. Training draws log sigma uniformly over
[``sigma_min``, ``sigma_max``], as the ADM classifier is trained on every timestep.

Guidance adds ``scale x grad_x log p(y | x)`` to the score: DDPM's ancestral mean moves by
``scale Sigma g`` (their algorithm 1), DDIM's eps by ``-sqrt(1 - alpha-bar) scale g``
(algorithm 2), and EDM's denoiser by ``scale sigma^2 grad_x log p`` (D = x + sigma^2 score).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genbench.generators.base import Batch, DataShape, GeneratorConfig, Trainable
from genbench.generators.training import Loss, Nets, OptimizerSpec, Phase, Training


class ClassifierConfig(GeneratorConfig):
    """The guidance classifier's network and training (defaults: a small network for
    16-32 px data; AdamW as the ADM classifier, lr 3e-4, weight decay 0.05)."""

    channels: int = Field(32, ge=1, description="width of the first level")
    channel_mult: tuple[int, ...] = Field((1, 2, 2), min_length=1, description="width per level")
    norm_groups: int = Field(8, ge=1)
    sigma_min: float = Field(0.002, gt=0, description="lowest training noise level")
    sigma_max: float = Field(80.0, gt=0, description="highest training noise level")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)

    @model_validator(mode="after")
    def _range(self) -> ClassifierConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be below sigma_max")
        return self


FOURIER = 16
"""Frequencies of the noise-level embedding."""


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class _Block(nn.Module):
    """Pre-activation residual block whose middle is shifted by the noise embedding."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(e)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class ClassifierNet(nn.Module):
    """Residual blocks over ``len(channel_mult)`` resolutions, mean-pooled, then linear."""

    def __init__(self, config: ClassifierConfig, data: DataShape) -> None:
        super().__init__()
        c, emb = config.channels, 4 * config.channels
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), FOURIER)))
        self.embed = nn.Sequential(nn.Linear(2 * FOURIER, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(data.channels, c, 3, padding=1)
        widths = [c * m for m in config.channel_mult]
        self.blocks = nn.ModuleList(
            _Block(a, b, emb, config.norm_groups)
            for a, b in zip([c, *widths], widths, strict=False)
        )
        self.norm_out = _norm(widths[-1], config.norm_groups)
        self.head = nn.Linear(widths[-1], data.num_classes)

    def forward(self, x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of images ``x_vp`` (N, C, H, W) at noise levels ``sigma`` (N,)."""
        angle = (sigma.log() / 4).to(x_vp.dtype)[:, None] * self.freqs[None]
        e = self.embed(torch.cat([angle.sin(), angle.cos()], dim=1))
        h = self.conv_in(x_vp)
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, e)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))


@dataclass(frozen=True)
class ClassifierDraws:
    images: torch.Tensor
    labels: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor


def to_vp(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x = x0 + sigma eps`` (VE) as the variance-preserving ``x / sqrt(1 + sigma^2)``."""
    return x / (1.0 + sigma.to(x.dtype) ** 2).sqrt().view(-1, *([1] * (x.dim() - 1)))


class NoisyClassifier(Trainable):
    """p(y | x_vp, sigma): the guidance classifier, its training and its gradient."""

    def __init__(self, config: ClassifierConfig, data: DataShape, device: torch.device) -> None:
        if data.num_classes < 2:
            raise ValueError(
                "classifier guidance needs a data set with class labels; this one has none"
            )
        self.config, self.data, self.device = config, data, torch.device(device)
        self.net = ClassifierNet(config, data).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"classifier": self.net}

    def training(self) -> Training:
        c = self.config
        adamw = functools.partial(torch.optim.AdamW, lr=c.lr, weight_decay=c.weight_decay)
        return Training(
            optimizers={"classifier": OptimizerSpec(("classifier",), adamw, c.lr)},
            phases=[Phase("main", "classifier", self.draw, self.loss)],
        )

    def draw(self, batch: Batch) -> ClassifierDraws:
        """Noise levels (log-uniform over the config's range) and noise for the batch."""
        if batch.labels is None:
            raise ValueError("the guidance classifier trains on labelled images")
        x0 = batch.images.to(self.device)
        lo, hi = math.log(self.config.sigma_min), math.log(self.config.sigma_max)
        sigma = torch.exp(lo + (hi - lo) * torch.rand(x0.shape[0], device=self.device))
        return ClassifierDraws(x0, batch.labels.to(self.device), sigma, torch.randn_like(x0))

    def loss(self, nets: Nets, d: ClassifierDraws) -> Loss:
        """Cross-entropy of the label given the noised image."""
        x_vp = to_vp(d.images + d.sigma.view(-1, 1, 1, 1) * d.noise, d.sigma)
        logits = nets["classifier"](x_vp, d.sigma)
        ce = F.cross_entropy(logits, d.labels, reduction="none")
        right = (logits.argmax(dim=1) == d.labels).float()
        return Loss(ce, {"loss": ce.detach(), "accuracy": right})

    def _sigma(self, sigma: torch.Tensor | float, n: int) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).expand(n)
        # Beyond the trained range the image is (nearly) all noise or all signal: the
        # nearest trained level stands in.
        return s.clamp(self.config.sigma_min, self.config.sigma_max)

    @torch.no_grad()
    def logits(self, x_vp: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        self.net.eval()
        return self.net(x_vp.float(), self._sigma(sigma, x_vp.shape[0]))

    def grad_log_prob(
        self, x_vp: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor
    ) -> torch.Tensor:
        """grad over ``x_vp`` of log p(labels | x_vp, sigma), per image (in float32)."""
        self.net.eval()
        # Sampling may run under inference mode (the timing does); its tensors cannot take
        # part in autograd, so the inputs are cloned into ordinary tensors first.
        with torch.enable_grad(), torch.inference_mode(False):
            x = x_vp.detach().float().clone().requires_grad_(True)
            y = labels.to(self.device).long().clone().view(-1, 1)
            s = self._sigma(sigma, x.shape[0]).clone()
            log_p = F.log_softmax(self.net(x, s), dim=1)
            # backward(inputs=...) rather than autograd.grad: module-tracking hooks (the
            # FLOP counter of bench speed) accept only the former.
            log_p.gather(1, y).sum().backward(inputs=[x])
        assert x.grad is not None
        return x.grad.to(x_vp.dtype)
