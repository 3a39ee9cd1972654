"""DDGAN: denoising diffusion GAN (Xiao, Kreis, Vahdat 2022).

A diffusion process of only T steps (4 on CIFAR-10) whose reverse steps are too large to be
Gaussian, so each is modelled by a conditional GAN: G(x_t, z, t) predicts x_0, a fake
x_{t-1} is drawn from the posterior q(x_{t-1} | x_t, x_0 = G(x_t, z, t)), and a time-
conditional discriminator D(x_{t-1}, x_t, t) tells real pairs from fake ones (paper,
section 3, eq. 4 and 5). Sampling runs the T steps from pure noise: T generator calls.

Training follows the official recipe: non-saturating losses, an R1 penalty on real pairs
joining every ``lazy_reg``-th D update, separate Adam optimisers (beta1 0.5, beta2 0.9)
whose rates decay along a cosine to 1e-5 over the run, random horizontal flips. The
harness keeps the EMA of G and does gradient accumulation (absent from the official code):
every random tensor of an update is drawn for the whole batch, which is cut into
micro-batches of whole minibatch-std groups of D, and every loss (R1 included) is a
per-sample mean, so one accumulated update equals one full-batch update.

Deviations from the official code: the cosine decay is stepped per update, not per epoch;
the R1 penalty is computed on its own real pairs (a second D pass on real data every
``lazy_reg`` steps) instead of on the pairs of D's main loss.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
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
    random_hflip,
)
from genbench.generators.ddgan_checkpoint import import_ddgan_state, is_ddgan_state
from genbench.generators.ddgan_nets import DDGANDiscriminatorNet, DDGANGeneratorNet, norm_groups
from genbench.generators.training import Loss, LRSchedule, Nets, OptimizerSpec, Phase, Training


class DDGANConfig(GeneratorConfig):
    """DDGAN hyper-parameters; defaults are the comparative project's CIFAR-10 setting."""

    num_timesteps: int = Field(4, ge=1, description="T: denoising steps (= NFE)")
    beta_min: float = Field(0.1, gt=0, description="VP schedule beta_min")
    beta_max: float = Field(20.0, gt=0, description="VP schedule beta_max")
    channels: int = Field(128, ge=4, description="generator UNet base channels")
    channel_mult: tuple[PositiveInt, ...] = Field((1, 2, 2, 2), min_length=1)
    num_res_blocks: int = Field(2, ge=1)
    attn_resolutions: tuple[PositiveInt, ...] = Field((16,), description="sizes with attention")
    dropout: float = Field(0.0, ge=0, lt=1)
    nz: int = Field(100, ge=1, description="latent z dimension")
    z_emb_dim: int = Field(256, ge=1, description="style (mapped z) dimension")
    n_mlp: int = Field(4, ge=0, description="hidden layers of the mapping network")
    fir: bool = Field(True, description="FIR [1, 3, 3, 1] resampling (else avg-pool / nearest)")
    progressive_input: Literal["none", "residual"] = Field(
        "residual", description="G's input pyramid (NCSN++'s progressive_input)"
    )
    d_channels: int = Field(64, ge=1, description="discriminator base channels (ngf)")
    d_channel_mult: tuple[PositiveInt, ...] = Field((2, 4, 8, 8), min_length=1)
    d_temb_dim: int | None = Field(
        None, ge=1, description="D's time embedding size; None = 4 x d_channels (256: the code's)"
    )
    d_stddev_group: int = Field(4, ge=1, description="minibatch-std group in D (1 = none)")
    r1_gamma: float = Field(0.02, ge=0, description="R1 penalty weight")
    lazy_reg: int = Field(15, ge=1, description="apply R1 every this many D updates")
    lr_g: float = Field(1.6e-4, gt=0)
    lr_d: float = Field(1.25e-4, gt=0)
    lr_decay: Literal["cosine", "constant"] = Field(
        "cosine", description="cosine decay of both rates to lr_floor over the run"
    )
    lr_floor: float = Field(1e-5, ge=0, description="where the cosine decay ends")
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    hflip: bool = Field(True, description="random horizontal flips of training images")

    @model_validator(mode="after")
    def _valid_widths(self) -> DDGANConfig:
        if self.beta_max < self.beta_min:
            raise ValueError("beta_max must be >= beta_min")
        for mult in self.channel_mult:
            width = self.channels * mult
            if width < 4 or width % norm_groups(width):
                raise ValueError(
                    f"channels x channel_mult = {width} must divide into min(C/4, 32) groups"
                )
        return self


class VPSchedule:
    """The discretised variance-preserving schedule of Xiao et al. 2022, as their code builds
    it: the VP SDE's perturbation kernel (Song et al. 2021, eq. 33), log alpha-bar(s) =
    -beta_min s - (beta_max - beta_min) s^2 / 2, at the times s_t = t_min + (1 - t_min) t/T,
    t = 0..T (the code's ``eps_small`` = 1e-3; the paper's appendix writes s_t = t/T), taken
    relative to s_0 so that index 0 is the data (alpha_bar_0 = 1, beta_0 = 0) and
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}.
    """

    def __init__(
        self, T: int, beta_min: float, beta_max: float, device: torch.device, t_min: float = 1e-3
    ) -> None:
        s = t_min + (1 - t_min) * torch.arange(0, T + 1, dtype=torch.float64) / T

        def log_kernel(s: torch.Tensor) -> torch.Tensor:
            return -beta_min * s - 0.5 * (beta_max - beta_min) * s**2

        log_abar = log_kernel(s) - log_kernel(s[:1])
        abar = log_abar.exp()
        beta = torch.cat([torch.zeros(1, dtype=torch.float64), 1 - abar[1:] / abar[:-1]])
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        denom = (1 - abar).clamp_min(1e-20)  # index 0 is never a posterior step
        self.beta = beta.float().to(device)
        self.alpha_bar = abar.float().to(device)
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7).
        self.coef_x0 = (prev.sqrt() * beta / denom).float().to(device)
        self.coef_xt = ((1 - beta).sqrt() * (1 - prev) / denom).float().to(device)
        self.posterior_var = (beta * (1 - prev) / denom).float().to(device)

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return values[t].view(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4)."""
        abar = self._at(self.alpha_bar, t)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_pair(
        self, x0: torch.Tensor, t: torch.Tensor, noise_prev: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A real pair (x_{t-1}, x_t): x_{t-1} ~ q(. | x_0), x_t ~ q(x_t | x_{t-1}) (eq. 1)."""
        x_prev = self.q_sample(x0, t - 1, noise_prev)
        beta = self._at(self.beta, t)
        return x_prev, (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def posterior_sample(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x_0); ``noise=None`` gives the mean (t = 1: exact)."""
        mean = self._at(self.coef_x0, t) * x0 + self._at(self.coef_xt, t) * x_t
        if noise is None:
            return mean
        return mean + self._at(self.posterior_var, t).sqrt() * noise


@dataclass(frozen=True)
class Draws:
    """The real images and every random tensor of one update, for the whole batch."""

    real: torch.Tensor  # training images (flipped when hflip)
    t: torch.Tensor  # (N,) time steps in 1..T
    noise_prev: torch.Tensor  # x_{t-1} ~ q(x_{t-1} | x_0)
    noise_step: torch.Tensor  # x_t ~ q(x_t | x_{t-1})
    z: torch.Tensor | None = None  # generator latents
    noise_post: torch.Tensor | None = None  # fake x_{t-1} ~ q(x_{t-1} | x_t, G(x_t, z, t))


@GENERATORS.register("ddgan")
class DDGAN(Generator):
    """Unconditional DDGAN (as in the paper). Sampling always runs the T steps it was
    trained for, so it has no sampling settings (``steps`` or ``guidance`` in a spec is an
    error); class labels are not used."""

    Config = DDGANConfig

    def __init__(self, config: DDGANConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.schedule = VPSchedule(
            config.num_timesteps, config.beta_min, config.beta_max, self.device
        )
        self.G = DDGANGeneratorNet(
            image_size=self.image_size,
            in_channels=data.channels,
            channels=config.channels,
            channel_mult=config.channel_mult,
            num_res_blocks=config.num_res_blocks,
            attn_resolutions=_check_layout(config, self.image_size),
            dropout=config.dropout,
            nz=config.nz,
            z_emb_dim=config.z_emb_dim,
            n_mlp=config.n_mlp,
            fir=config.fir,
            progressive_input=config.progressive_input,
        ).to(self.device)
        self.D = DDGANDiscriminatorNet(
            data.channels,
            config.d_channels,
            config.d_channel_mult,
            config.d_stddev_group,
            temb_dim=config.d_temb_dim or 4 * config.d_channels,
            fir=config.fir,
        ).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def sampling_modules(self) -> list[str]:
        return ["G"]

    def import_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state of an official DDGAN generator (NVlabs/denoising-diffusion-gan
        ``netG_*.pth``; ``genbench.generators.ddgan_checkpoint``), read as tensors only. The
        published files hold G only: D keeps its current (initial) weights."""
        if not is_ddgan_state(state):
            raise ValueError(
                "neither a genbench safetensors checkpoint nor an official DDGAN generator "
                "(no module.z_transform.1.weight in it)"
            )
        G = {f"G.{key}": value for key, value in import_ddgan_state(self.G, state).items()}
        return G | {f"D.{key}": value for key, value in self.D.state_dict().items()}

    # ------------------------------------------------------------------ training

    def training(self) -> Training:
        """Adam for D and G (beta1 0.5, beta2 0.9), both decayed along a cosine to
        ``lr_floor`` over the run (the official ``CosineAnnealingLR``, stepped per update
        here instead of per epoch). Per step: D's update on real and fake pairs, with the
        R1 penalty joining it every ``lazy_reg`` steps, then G's update."""
        c = self.config
        adam = functools.partial(torch.optim.Adam, betas=(c.beta1, c.beta2))
        schedule = LRSchedule(decay=c.lr_decay, floor=c.lr_floor if c.lr_decay == "cosine" else 0)
        group = c.d_stddev_group  # micro-batches keep D's minibatch-std groups whole
        phases = [Phase("D", "D", self._draw, self._d_loss, group=group)]
        if c.r1_gamma > 0:
            phases.append(
                Phase("R1", "D", self._draw_real, self._r1_loss, interval=c.lazy_reg, group=group)
            )
        phases.append(Phase("G", "G", self._draw, self._g_loss, group=group))
        return Training(
            optimizers={
                "D": OptimizerSpec(("D",), functools.partial(adam, lr=c.lr_d), c.lr_d, schedule),
                "G": OptimizerSpec(("G",), functools.partial(adam, lr=c.lr_g), c.lr_g, schedule),
            },
            phases=phases,
        )

    def _real(self, batch: Batch) -> torch.Tensor:
        real = batch.images.to(self.device)
        return random_hflip(real) if self.config.hflip else real

    def _draw_real(self, batch: Batch) -> Draws:
        """The real pairs of an update (all an R1 pass needs), from the global torch RNG
        (seeded by the harness)."""
        real = self._real(batch)
        n, shape = real.shape[0], real.shape[1:]
        return Draws(
            real=real,
            t=torch.randint(1, self.config.num_timesteps + 1, (n,), device=self.device),
            noise_prev=torch.randn(n, *shape, device=self.device),
            noise_step=torch.randn(n, *shape, device=self.device),
        )

    def _draw(self, batch: Batch) -> Draws:
        """Every random tensor of a D or G update: the real pairs, then latents and
        posterior noise."""
        d = self._draw_real(batch)
        n, shape = d.real.shape[0], d.real.shape[1:]
        return dataclasses.replace(
            d,
            z=torch.randn(n, self.config.nz, device=self.device),
            noise_post=torch.randn(n, *shape, device=self.device),
        )

    def _fake_prev(self, G: nn.Module, x_t: torch.Tensor, d: Draws) -> torch.Tensor:
        """Fake x_{t-1} from the posterior at G's x_0 prediction (paper, eq. 5)."""
        return self.schedule.posterior_sample(G(x_t, d.z, d.t), x_t, d.t, d.noise_post)

    def _d_loss(self, nets: Nets, d: Draws) -> Loss:
        x_prev, x_t = self.schedule.q_pair(d.real, d.t, d.noise_prev, d.noise_step)
        logits_real = nets["D"](x_prev, x_t, d.t)
        with torch.no_grad():
            fake = self._fake_prev(nets["G"], x_t, d)
        logits_fake = nets["D"](fake, x_t, d.t)
        # Non-saturating GAN loss for D: softplus(-D(real)) + softplus(D(fake)).
        value = F.softplus(-logits_real) + F.softplus(logits_fake)
        return Loss(
            value, {"loss_d": value.detach(), "d_real": torch.sigmoid(logits_real).detach()}
        )

    def _r1_loss(self, nets: Nets, d: Draws) -> Loss:
        x_prev, x_t = self.schedule.q_pair(d.real, d.t, d.noise_prev, d.noise_step)
        x_prev.requires_grad_(True)
        logits = nets["D"](x_prev, x_t, d.t)
        (grad,) = torch.autograd.grad(logits.sum(), x_prev, create_graph=True)
        penalty = grad.flatten(1).square().sum(1)
        # R1 = gamma / 2 * E ||grad_x D(x)||^2 on real data (Mescheder et al. 2018, eq. 9).
        # "+ 0 * logits" puts every parameter of D in the graph (the head's bias has no
        # gradient through R1), so DDP's all-reduce finds each one, as in StyleGAN2-ADA.
        value = 0.5 * self.config.r1_gamma * penalty + 0.0 * logits
        return Loss(value, {"r1": penalty.detach()})

    def _g_loss(self, nets: Nets, d: Draws) -> Loss:
        _, x_t = self.schedule.q_pair(d.real, d.t, d.noise_prev, d.noise_step)
        logits = nets["D"](self._fake_prev(nets["G"], x_t, d), x_t, d.t)
        # Non-saturating generator loss: softplus(-D(fake)) (Goodfellow et al. 2014, sec. 3).
        value = F.softplus(-logits)
        return Loss(value, {"loss_g": value.detach()})

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        settings: SampleSettings | None = None,
    ) -> torch.Tensor:
        T = self.config.num_timesteps
        shape = (self.data.channels, self.image_size, self.image_size)
        # Streams: 0 = x_T; reverse step i draws its latent on 1 + 2i, its noise on 2 + 2i.
        x = seeded_randn(seeds, shape, self.device, stream=0)
        with eval_mode(self.G):
            for i, t in enumerate(range(T, 0, -1)):
                tt = torch.full((len(seeds),), t, device=self.device, dtype=torch.long)
                z = seeded_randn(seeds, (self.config.nz,), self.device, stream=1 + 2 * i)
                # q(x_0 | x_1, x_0) has zero variance: the last step needs no noise.
                noise = seeded_randn(seeds, shape, self.device, stream=2 + 2 * i) if t > 1 else None
                x = self.schedule.posterior_sample(self.G(x, z, tt), x, tt, noise)
        return x.clamp_(-1.0, 1.0)

    def nfe(self, settings: SampleSettings | None = None) -> int:
        return self.config.num_timesteps  # one generator call per reverse step


def _check_layout(config: DDGANConfig, image_size: int) -> tuple[int, ...]:
    """The attention resolutions, after checking they and the levels fit ``image_size``."""
    levels = len(config.channel_mult)
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1}")
    sizes = {image_size // 2**i for i in range(levels)}
    unknown = set(config.attn_resolutions) - sizes
    if unknown:
        raise ValueError(f"attn_resolutions {sorted(unknown)} are not among the levels {sizes}")
    if image_size % 2 ** (len(config.d_channel_mult) - 1):
        raise ValueError("image_size is too small for the discriminator's down-samplings")
    return config.attn_resolutions
