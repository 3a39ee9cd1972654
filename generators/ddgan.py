"""DDGAN: denoising diffusion GAN (Xiao, Kreis, Vahdat 2022), with gradient accumulation.

A diffusion process of only T steps (4 on CIFAR-10) whose reverse steps are too large to be
Gaussian, so each is modelled by a conditional GAN: G(x_t, z, t) predicts x_0, a fake
x_{t-1} is drawn from the posterior q(x_{t-1} | x_t, x_0 = G(x_t, z, t)), and a time-
conditional discriminator D(x_{t-1}, x_t, t) tells real pairs from fake ones (paper,
section 3, eq. 4 and 5). Sampling runs the T steps from pure noise: T generator calls.

Training follows the official recipe: non-saturating losses, an R1 penalty on real pairs
every ``lazy_reg`` D updates, separate Adam optimisers (beta1 0.5, beta2 0.9). The harness
keeps the EMA of G. Added here (the official code has none): gradient accumulation. Every
random tensor of an update is drawn for the whole batch before it is cut into ``grad_accum``
micro-batches of whole minibatch-std groups of D, each micro-loss is weighted by its share
of the batch, and R1 is a per-sample mean too, so one accumulated update equals one
full-batch update.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

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
    gradient_sync,
)
from genbench.generators.ddgan_nets import DDGANDiscriminatorNet, DDGANGeneratorNet, norm_groups


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
    d_channels: int = Field(64, ge=1, description="discriminator base channels (ngf)")
    d_channel_mult: tuple[PositiveInt, ...] = Field((2, 4, 8, 8), min_length=1)
    d_stddev_group: int = Field(4, ge=1, description="minibatch-std group in D (1 = none)")
    r1_gamma: float = Field(0.02, ge=0, description="R1 penalty weight")
    lazy_reg: int = Field(15, ge=1, description="apply R1 every this many D updates")
    lr_g: float = Field(1.6e-4, gt=0)
    lr_d: float = Field(1.25e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser update")

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
    """The discretised variance-preserving schedule of Xiao et al. 2022 (appendix).

    beta_t = 1 - exp(-beta_min / T - (beta_max - beta_min) (2t - 1) / (2 T^2)), t = 1..T,
    so alpha_bar_t = prod_{s<=t} (1 - beta_s) = exp(-beta_min t/T - (beta_max - beta_min)
    t^2 / (2 T^2)): the VP SDE's perturbation kernel at time t/T (Song et al. 2021, eq. 33).
    Tensors are indexed by t = 0..T (index 0: the data, alpha_bar_0 = 1).
    """

    def __init__(self, T: int, beta_min: float, beta_max: float, device: torch.device) -> None:
        t = torch.arange(0, T + 1, dtype=torch.float64)
        log_abar = -beta_min * t / T - 0.5 * (beta_max - beta_min) * t**2 / T**2
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
    """Every random tensor of one G or D update, drawn for the whole batch at once."""

    t: torch.Tensor  # (N,) time steps in 1..T
    noise_prev: torch.Tensor  # x_{t-1} ~ q(x_{t-1} | x_0)
    noise_step: torch.Tensor  # x_t ~ q(x_t | x_{t-1})
    z: torch.Tensor  # generator latents
    noise_post: torch.Tensor  # fake x_{t-1} ~ q(x_{t-1} | x_t, G(x_t, z, t))

    def __getitem__(self, rows: slice) -> Draws:
        return Draws(*(getattr(self, f.name)[rows] for f in fields(self)))


def group_slices(n: int, parts: int, group: int) -> list[slice]:
    """``parts`` consecutive micro-batches of ``n`` samples made of whole groups of ``group``
    (the last group may be smaller), as even as possible: D's minibatch-std groups are then
    the same in every micro-batch as in the full batch."""
    groups = -(-n // group)
    if not 1 <= parts <= groups:
        raise ValueError(
            f"grad_accum {parts} needs at least {parts} groups of d_stddev_group = {group} "
            f"images; the batch has {n}"
        )
    base, extra = divmod(groups, parts)
    bounds = [min(n, group * (i * base + min(i, extra))) for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` (D during G's update), restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


MicroLoss = Callable[[torch.Tensor, Draws], tuple[torch.Tensor, dict[str, float]]]


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
        ).to(self.device)
        self.D = DDGANDiscriminatorNet(
            data.channels, config.d_channels, config.d_channel_mult, config.d_stddev_group
        ).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas)
        self.d_updates = 0  # drives the lazy R1 schedule

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def sampling_modules(self) -> list[str]:
        return ["G"]

    # ------------------------------------------------------------------ training

    def _draws(self, images: torch.Tensor) -> Draws:
        # Training randomness comes from the global torch RNG (seeded by the harness).
        n, shape = images.shape[0], images.shape[1:]
        return Draws(
            t=torch.randint(1, self.config.num_timesteps + 1, (n,), device=self.device),
            noise_prev=torch.randn(n, *shape, device=self.device),
            noise_step=torch.randn(n, *shape, device=self.device),
            z=torch.randn(n, self.config.nz, device=self.device),
            noise_post=torch.randn(n, *shape, device=self.device),
        )

    def _fake_prev(self, x_t: torch.Tensor, d: Draws) -> torch.Tensor:
        """Fake x_{t-1} from the posterior at G's x_0 prediction (paper, eq. 5)."""
        return self.schedule.posterior_sample(self.G(x_t, d.z, d.t), x_t, d.t, d.noise_post)

    def _d_loss(self, real: torch.Tensor, d: Draws, r1: bool) -> tuple[torch.Tensor, dict]:
        x_prev, x_t = self.schedule.q_pair(real, d.t, d.noise_prev, d.noise_step)
        x_prev.requires_grad_(r1)
        logits_real = self.D(x_prev, x_t, d.t)
        with torch.no_grad():
            fake = self._fake_prev(x_t, d)
        logits_fake = self.D(fake, x_t, d.t)
        # Non-saturating GAN loss for D: softplus(-D(real)) + softplus(D(fake)).
        loss = F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()
        logs = {"loss_d": loss.item(), "d_real": torch.sigmoid(logits_real).mean().item()}
        if r1:
            (grad,) = torch.autograd.grad(logits_real.sum(), x_prev, create_graph=True)
            penalty = grad.flatten(1).square().sum(1).mean()
            # R1 = gamma / 2 * E ||grad_x D(x)||^2 on real data (Mescheder et al. 2018, eq. 9).
            loss = loss + 0.5 * self.config.r1_gamma * penalty
            logs["r1"] = penalty.item()
        return loss, logs

    def _g_loss(self, real: torch.Tensor, d: Draws) -> tuple[torch.Tensor, dict]:
        _, x_t = self.schedule.q_pair(real, d.t, d.noise_prev, d.noise_step)
        logits = self.D(self._fake_prev(x_t, d), x_t, d.t)
        # Non-saturating generator loss: softplus(-D(fake)) (Goodfellow et al. 2014, sec. 3).
        loss = F.softplus(-logits).mean()
        return loss, {"loss_g": loss.item()}

    def _accumulate(
        self, batch: Batch, loss_fn: MicroLoss, net: nn.Module, opt: torch.optim.Optimizer
    ) -> dict[str, float]:
        """One update of ``net`` from ``grad_accum`` micro-batches; returns weighted logs."""
        n = len(batch)
        slices = group_slices(n, self.config.grad_accum, self.config.d_stddev_group)
        draws = self._draws(batch.images)  # the whole batch first: independent of the split
        opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for i, rows in enumerate(slices):
            weight = (rows.stop - rows.start) / n  # micro-batch means -> the full-batch mean
            loss, micro_logs = loss_fn(batch.images[rows].to(self.device), draws[rows])
            with gradient_sync([net], sync=i == len(slices) - 1):
                (loss * weight).backward()
            for key, value in micro_logs.items():
                logs[key] = logs.get(key, 0.0) + weight * value
        opt.step()
        return logs

    def train_step(self, batch: Batch) -> dict[str, float]:
        r1 = self.config.r1_gamma > 0 and self.d_updates % self.config.lazy_reg == 0
        logs = self._accumulate(batch, lambda x, d: self._d_loss(x, d, r1), self.D, self.opt_d)
        self.d_updates += 1
        with frozen(self.D):
            logs.update(self._accumulate(batch, self._g_loss, self.G, self.opt_g))
        return logs

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
