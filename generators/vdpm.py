"""VDPM: continuous-time v-prediction diffusion on a log-SNR schedule.

Papers: Kingma, Salimans, Poole, Ho 2021, "Variational Diffusion Models" (VDM: continuous
time, log-SNR parametrisation, the continuous ELBO); Salimans & Ho 2022, "Progressive
Distillation for Fast Sampling of Diffusion Models" (v-prediction, truncated-SNR weighting,
the cosine log-SNR schedule); Ho & Salimans 2021, "Classifier-Free Diffusion Guidance";
Song, Meng, Ermon 2020, "Denoising Diffusion Implicit Models" (DDIM). The setting reproduced
is tqch/v-diffusion-torch's class-conditional CIFAR-10 model (FID 2.58, IS 9.76 at w = 0).

Notation. Time t in [0, 1] maps to the log signal-to-noise ratio lambda(t) = log(alpha^2 /
sigma^2), decreasing from ``logsnr_max`` at t = 0 to ``logsnr_min`` at t = 1, with
alpha^2 = sigmoid(lambda) and sigma^2 = sigmoid(-lambda) (VDM's variance-preserving q(z_t|x));
z_t = alpha x + sigma eps. Schedules (named, as in v-diffusion-torch, by how alpha^2 depends
on t; each is exactly logsnr_max at t = 0 and logsnr_min at t = 1, and strictly decreasing):

- ``sigmoid``: lambda linear in t, so alpha^2 = sigmoid(affine(t)): VDM's fixed linear
  schedule gamma(t) = gamma_min + (gamma_max - gamma_min) t with gamma = -lambda.
- ``linear``: alpha^2 (and sigma^2) linear in t, from sigmoid(logsnr_max) to
  sigmoid(logsnr_min); lambda = log alpha^2 - log sigma^2 (the alpha^2 analogue of the above).
- ``cosine``: lambda = -2 log tan(a t + b), with b = atan(exp(-logsnr_max / 2)) and
  a = atan(exp(-logsnr_min / 2)) - b: Nichol & Dhariwal 2021's cosine schedule written as a
  log-SNR and truncated to the bounds (as Salimans & Ho 2022 use it for CIFAR-10).
- ``legacy``: Ho et al. 2020's discrete linear betas (1e-4 to 0.02, section 4) made
  continuous: beta(u) = beta_1 + u (beta_T - beta_1), F(t) = int_0^t log(1 - beta(u)) du (so
  T F(t) is the continuum limit of log alpha-bar), and log alpha^2(t) = log sigmoid(logsnr_max)
  + F(t) / F(1) (log sigmoid(logsnr_min) - log sigmoid(logsnr_max)): the shape of DDPM's
  log alpha-bar, stretched to the log-SNR bounds (v-diffusion-torch's ``legacy`` does the
  same for the fixed bounds +-20).

Schedules and every coefficient built from them are computed in float64.

Model outputs: ``x_0``, ``eps``, ``v`` (v = alpha eps - sigma x, Salimans & Ho section 4)
or ``both`` (x and eps as two channel groups, merged as x = sigma^2 x_pred + alpha (z - sigma
eps_pred), Salimans & Ho section 4). Every output is turned into (x_0, eps) by the conversion
functions below, which training and both samplers share.

Losses. ``mse``: w(lambda) ||x - x_pred||^2 (mean over pixels) with w = 1 (``constant``),
snr (``snr``: the eps-MSE), max(snr, 1) (``truncated_snr``, Salimans & Ho section 4's
"truncated SNR" weighting, = max(||x - x_pred||^2, ||eps - eps_pred||^2)) or 1 + snr
(``alpha2``: the plain v-MSE ||v - v_pred||^2 = ||eps - eps_pred||^2 / alpha^2, named as in
v-diffusion-torch). ``kl``: the diffusion term of the ELBO in nats per dimension: VDM's
continuous-time L_inf (-1/2 SNR'(t) ||x - x_pred||^2) or its discrete-time L_T with
T = ``train_timesteps`` (T/2 (SNR(s) - SNR(t)) ||x - x_pred||^2, s = t - 1/T); the prior and
reconstruction terms do not depend on the network and are left out. Every weighting is evaluated as
w sigma^2 ||v - v_pred||^2, which is the same number but well conditioned at both ends of the
log-SNR range (w sigma^2 stays in [0, 1] for the mse weightings).

Sampling over N steps t_i = i / N: DDIM (eta = 0, Song et al. eq. 12: z_s = alpha_s x_pred +
sigma_s eps_pred) or ancestral sampling from q(z_s | z_t, x = x_pred) (VDM appendix A) with
variance ``fixed_small`` (the posterior's, (1 - r) sigma_s^2, r = SNR(t)/SNR(s)),
``fixed_large`` ((1 - r) sigma_t^2, DDPM's beta_t) or ``fixed_medium`` (log-space
interpolation, ``intp_frac`` of the way from small to large). The last step returns x_pred.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genbench.generators.base import (
    GENERATORS,
    Batch,
    DataShape,
    Generator,
    GeneratorConfig,
    eval_mode,
    gradient_sync,
    random_hflip,
    seeded_randn,
    set_warmup_lr,
)
from genbench.generators.guidance import drop_labels, guide, net_labels
from genbench.generators.unet import build_unet, unet_apply

Tensor = torch.Tensor
Schedule = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- schedules


def _logsnr_sigmoid(t: Tensor, lmin: float, lmax: float) -> Tensor:
    # Kingma et al. 2021, fixed linear schedule: gamma(t) = -lambda(t) linear in t.
    return lmax + t * (lmin - lmax)


def _logsnr_linear(t: Tensor, lmin: float, lmax: float) -> Tensor:
    # alpha^2 and sigma^2 = 1 - alpha^2 interpolated separately so neither end loses digits.
    alpha2 = torch.sigmoid(torch.tensor(lmax, dtype=t.dtype)) * (1 - t)
    alpha2 = alpha2 + t * torch.sigmoid(torch.tensor(lmin, dtype=t.dtype))
    sigma2 = torch.sigmoid(torch.tensor(-lmax, dtype=t.dtype)) * (1 - t)
    sigma2 = sigma2 + t * torch.sigmoid(torch.tensor(-lmin, dtype=t.dtype))
    return alpha2.log() - sigma2.log()


def _logsnr_cosine(t: Tensor, lmin: float, lmax: float) -> Tensor:
    # Nichol & Dhariwal 2021 eq. 17 (s = 0): alpha / sigma = 1 / tan(pi t / 2), so lambda =
    # -2 log tan(a t + b); a and b squeeze [0, pi/2] to the bounds (Salimans & Ho 2022).
    b = math.atan(math.exp(-0.5 * lmax))
    a = math.atan(math.exp(-0.5 * lmin)) - b
    return -2.0 * torch.log(torch.tan(a * t + b))


_BETA_1, _BETA_T = 1e-4, 0.02  # Ho et al. 2020, section 4


def _ddpm_log_alpha_integral(t: Tensor) -> Tensor:
    """F(t) = int_0^t log(1 - beta(u)) du for DDPM's linear beta(u) (closed form)."""
    d0, slope = 1.0 - _BETA_1, _BETA_T - _BETA_1  # 1 - beta(u) = d0 - slope u

    def antiderivative(d: Tensor) -> Tensor:  # int log(d) dd = d log d - d
        return d * torch.log(d) - d

    start = antiderivative(torch.as_tensor(d0, dtype=t.dtype))
    return (start - antiderivative(d0 - slope * t)) / slope


def _logsnr_legacy(t: Tensor, lmin: float, lmax: float) -> Tensor:
    lo = F.logsigmoid(torch.tensor(lmin, dtype=t.dtype))
    hi = F.logsigmoid(torch.tensor(lmax, dtype=t.dtype))
    frac = _ddpm_log_alpha_integral(t) / _ddpm_log_alpha_integral(torch.ones((), dtype=t.dtype))
    log_alpha2 = hi + frac * (lo - hi)
    # lambda = log alpha^2 - log(1 - alpha^2), the latter as log(-expm1(.)) for precision.
    return log_alpha2 - torch.log(-torch.expm1(log_alpha2))


LOGSNR_SCHEDULES: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "linear": _logsnr_linear,
    "sigmoid": _logsnr_sigmoid,
    "cosine": _logsnr_cosine,
    "legacy": _logsnr_legacy,
}


def logsnr_schedule(name: str, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> Schedule:
    """lambda(t) of the named schedule (module docstring): float64 in, float64 out."""
    if name not in LOGSNR_SCHEDULES:
        raise ValueError(f"unknown log-SNR schedule {name!r}; valid: {', '.join(LOGSNR_SCHEDULES)}")
    fn = LOGSNR_SCHEDULES[name]
    return lambda t: fn(t.to(torch.float64), logsnr_min, logsnr_max)


# --------------------------------------------------------------------------- conversions


def _alpha_sigma(logsnr: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)), shaped to broadcast."""
    shape = (-1,) + (1,) * (like.dim() - 1) if logsnr.dim() else ()
    lam = logsnr.to(torch.float64)
    alpha = torch.sigmoid(lam).sqrt().reshape(shape).to(like.dtype)
    sigma = torch.sigmoid(-lam).sqrt().reshape(shape).to(like.dtype)
    return alpha, sigma


def diffuse(x0: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    """z_t = alpha x + sigma eps, a draw of q(z_t | x) (Kingma et al. 2021)."""
    alpha, sigma = _alpha_sigma(logsnr, x0)
    return alpha * x0 + sigma * eps


def x0_from_eps(z: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    """x = (z - sigma eps) / alpha."""
    alpha, sigma = _alpha_sigma(logsnr, z)
    return (z - sigma * eps) / alpha


def eps_from_x0(z: Tensor, x0: Tensor, logsnr: Tensor) -> Tensor:
    """eps = (z - alpha x) / sigma."""
    alpha, sigma = _alpha_sigma(logsnr, z)
    return (z - alpha * x0) / sigma


def v_from_x0_eps(x0: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    """v = alpha eps - sigma x (Salimans & Ho 2022, section 4)."""
    alpha, sigma = _alpha_sigma(logsnr, x0)
    return alpha * eps - sigma * x0


def x0_from_v(z: Tensor, v: Tensor, logsnr: Tensor) -> Tensor:
    """x = alpha z - sigma v (Salimans & Ho 2022, section 4)."""
    alpha, sigma = _alpha_sigma(logsnr, z)
    return alpha * z - sigma * v


def eps_from_v(z: Tensor, v: Tensor, logsnr: Tensor) -> Tensor:
    """eps = sigma z + alpha v (Salimans & Ho 2022, section 4)."""
    alpha, sigma = _alpha_sigma(logsnr, z)
    return sigma * z + alpha * v


def _from_x0(z: Tensor, out: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    return out, eps_from_x0(z, out, logsnr)


def _from_eps(z: Tensor, out: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    return x0_from_eps(z, out, logsnr), out


def _from_v(z: Tensor, out: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    return x0_from_v(z, out, logsnr), eps_from_v(z, out, logsnr)


def _from_both(z: Tensor, out: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    x_pred, eps_pred = out.chunk(2, dim=1)
    alpha, sigma = _alpha_sigma(logsnr, z)
    # Salimans & Ho 2022, section 4: x = sigma^2 x_pred + alpha (z - sigma eps_pred).
    x0 = sigma**2 * x_pred + alpha * (z - sigma * eps_pred)
    return x0, eps_from_x0(z, x0, logsnr)


OUTPUT_TO_X0_EPS: dict[str, Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "x_0": _from_x0,
    "eps": _from_eps,
    "v": _from_v,
    "both": _from_both,
}

OUTPUT_FROM_X0_EPS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "x_0": lambda x0, eps, logsnr: x0,
    "eps": lambda x0, eps, logsnr: eps,
    "v": v_from_x0_eps,
    "both": lambda x0, eps, logsnr: torch.cat([x0, eps], dim=1),
}
"""The exact network output of each type for a given (x_0, eps): the training targets of a
perfect model (used by the tests' oracle denoisers)."""

OUTPUT_CHANNELS = {"x_0": 1, "eps": 1, "v": 1, "both": 2}  # x image channels


# --------------------------------------------------------------------------- losses


def _w_constant(logsnr: Tensor) -> Tensor:
    return torch.ones_like(logsnr)


def _w_snr(logsnr: Tensor) -> Tensor:
    return logsnr.exp()


def _w_truncated_snr(logsnr: Tensor) -> Tensor:
    # Salimans & Ho 2022, section 4: L = max(||x - x_pred||^2, ||eps - eps_pred||^2).
    return logsnr.exp().clamp(min=1.0)


def _w_alpha2(logsnr: Tensor) -> Tensor:
    return 1.0 + logsnr.exp()  # ||v - v_pred||^2 = (1 + snr) ||x - x_pred||^2


MSE_WEIGHTS: dict[str, Callable[[Tensor], Tensor]] = {
    "constant": _w_constant,
    "snr": _w_snr,
    "truncated_snr": _w_truncated_snr,
    "alpha2": _w_alpha2,
}
"""x-space loss weight w(lambda) of each ``reweight_type`` (float64 in and out)."""


def kl_weight_continuous(schedule: Schedule, t: Tensor) -> Tensor:
    """-1/2 d SNR/dt: the x-space weight of VDM's continuous-time loss L_inf."""
    with torch.enable_grad():
        tt = t.detach().to(torch.float64).requires_grad_(True)
        snr = schedule(tt).exp()
        (dsnr,) = torch.autograd.grad(snr.sum(), tt)
    return -0.5 * dsnr


def kl_weight_discrete(schedule: Schedule, t: Tensor, timesteps: int) -> Tensor:
    """T/2 (SNR(s) - SNR(t)), s = t - 1/T: the x-space weight of VDM's discrete L_T."""
    t = t.to(torch.float64)
    s = (t - 1.0 / timesteps).clamp(min=0.0)
    return 0.5 * timesteps * (schedule(s).exp() - schedule(t).exp())


def weighted_v_loss(v_pred: Tensor, v: Tensor, weight: Tensor, logsnr: Tensor) -> Tensor:
    """Per-sample w ||x - x_pred||^2 (mean over pixels), evaluated as w sigma^2 ||v - v_pred||^2.

    ||v - v_pred||^2 = ||x - x_pred||^2 / sigma^2 (Salimans & Ho section 4), so this is exact,
    and it avoids dividing a float32 x-error by alpha or sigma at the ends of the range.
    """
    factor = (weight.to(torch.float64) * torch.sigmoid(-logsnr.to(torch.float64))).to(v.dtype)
    return factor * (v_pred - v).pow(2).flatten(1).mean(1)


# --------------------------------------------------------------------------- samplers


def _posterior_log_terms(logsnr_t: Tensor, logsnr_s: Tensor) -> tuple[Tensor, Tensor]:
    """log r and log(1 - r), r = SNR(t) / SNR(s) < 1 (Kingma et al. 2021), in float64."""
    log_r = (logsnr_t - logsnr_s).to(torch.float64)
    return log_r, torch.log(-torch.expm1(log_r))


def ddim_step(
    z: Tensor,
    x0: Tensor,
    eps: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    noise: Callable[[], Tensor],
) -> Tensor:
    """z_s = alpha_s x_pred + sigma_s eps_pred: DDIM with eta = 0 (Song et al. 2020, eq. 12)."""
    return diffuse(x0, eps, logsnr_s)


def ancestral_step(
    z: Tensor,
    x0: Tensor,
    eps: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    noise: Callable[[], Tensor],
    intp_frac: float,
) -> Tensor:
    """z_s ~ N(mu, var) with mu the mean of q(z_s | z_t, x = x_pred) (Kingma et al. 2021,
    appendix A; Ho et al. 2020, eq. 7) and
    log var = (1 - f) log[(1 - r) sigma_s^2] + f log[(1 - r) sigma_t^2], f = ``intp_frac``."""
    log_r, log_1mr = _posterior_log_terms(logsnr_t, logsnr_s)
    lt, ls = logsnr_t.to(torch.float64), logsnr_s.to(torch.float64)
    # mu = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x
    coef_z = torch.exp(log_r + 0.5 * (F.logsigmoid(ls) - F.logsigmoid(lt)))
    coef_x = torch.exp(log_1mr + 0.5 * F.logsigmoid(ls))
    log_var = log_1mr + (1 - intp_frac) * F.logsigmoid(-ls) + intp_frac * F.logsigmoid(-lt)
    mean = float(coef_z) * z + float(coef_x) * x0
    return mean + float(torch.exp(0.5 * log_var)) * noise()


VARIANCE_FRACTIONS: dict[str, Callable[[float], float]] = {
    "fixed_small": lambda intp_frac: 0.0,  # the true posterior variance
    "fixed_large": lambda intp_frac: 1.0,  # DDPM's beta_t
    "fixed_medium": lambda intp_frac: intp_frac,
}
"""Fraction of the way from log small to log large variance, given ``intp_frac``."""

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Step = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Callable[[], Tensor]], Tensor]

SAMPLERS: dict[str, Callable[[VDPMConfig], Step]] = {
    "ddim": lambda c: ddim_step,
    "ancestral": lambda c: partial(
        ancestral_step, intp_frac=VARIANCE_FRACTIONS[c.model_var_type](c.intp_frac)
    ),
}
"""The step function of each ``sampler``, built from the config."""


def sample_loop(
    denoise: Denoiser, z: Tensor, logsnrs: Tensor, step: Step, noise: Callable[[int], Tensor]
) -> Tensor:
    """Run ``step`` from logsnrs[0] (t = 1) to logsnrs[-1] (t = 0); returns the last x_pred.

    ``denoise(z, logsnr) -> (x_pred, eps_pred)``; ``noise(i)`` is step i's fresh noise,
    drawn only by steps that need it.
    """
    if len(logsnrs) < 2:
        raise ValueError("sampling needs at least one step")
    for i in range(len(logsnrs) - 2):
        x0, eps = denoise(z, logsnrs[i])
        z = step(z, x0, eps, logsnrs[i], logsnrs[i + 1], partial(noise, i))
    return denoise(z, logsnrs[-2])[0]


# --------------------------------------------------------------------------- config


class VDPMConfig(GeneratorConfig):
    """VDPM hyper-parameters; defaults are v-diffusion-torch's class-conditional CIFAR-10
    setting (configs/cifar10_cond.json, after google-research's cifar_retrain_unet3)."""

    # backbone (v-diffusion-torch UNet: 256 ch, x1 x1 x1, 3 blocks, attention at 16 and 8)
    channels: int = Field(256, ge=1)
    channel_mult: tuple[int, ...] = Field((1, 1, 1), min_length=1)
    num_res_blocks: int = Field(3, ge=1)
    attn_resolutions: tuple[int, ...] = (16, 8)
    dropout: float = Field(0.2, ge=0, lt=1)
    norm_groups: int = Field(32, ge=1)
    scale_shift_norm: bool = Field(True, description="scale/shift time conditioning")
    resblock_resample: bool = Field(True, description="BigGAN-style residual up/down-sampling")
    # diffusion
    logsnr_schedule: Literal["linear", "sigmoid", "cosine", "legacy"] = "cosine"
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    train_timesteps: int = Field(0, ge=0, description="0 = continuous time, else T")
    model_out_type: Literal["x_0", "eps", "both", "v"] = "v"
    loss_type: Literal["mse", "kl"] = "mse"
    reweight_type: Literal["constant", "snr", "truncated_snr", "alpha2"] = "truncated_snr"
    # classifier-free guidance (Ho & Salimans 2021)
    class_conditional: bool = Field(True, description="use labels when the data has them")
    p_uncond: float = Field(0.1, ge=0, lt=1, description="label dropout rate in training")
    w_guide: float = Field(0.0, ge=0, description="guidance strength when the spec gives none")
    # sampling
    sampler: Literal["ddim", "ancestral"] = "ddim"
    sample_steps: int = Field(1024, ge=1, lt=65_536, description="N when the spec gives none")
    model_var_type: Literal["fixed_small", "fixed_large", "fixed_medium"] = "fixed_medium"
    intp_frac: float = Field(0.3, ge=0, le=1, description="fixed_medium's log-space fraction")
    clip_denoised: bool = Field(True, description="clip x_pred to [-1, 1] while sampling")
    hflip: bool = Field(True, description="random horizontal flips of training images")
    # optimisation (AdamW, linear warm-up, gradient clipping)
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.001, ge=0, description="decoupled (AdamW) weight decay")
    warmup_steps: int = Field(10_000, ge=0, description="linear learning-rate warm-up")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 = no clipping")
    num_accum: int = Field(1, ge=1, description="micro-batches per optimiser update")

    @model_validator(mode="after")
    def _consistent(self) -> VDPMConfig:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError("logsnr_min must be below logsnr_max")
        if any(self.channels * m % self.norm_groups for m in self.channel_mult):
            raise ValueError("channels x every channel_mult must be divisible by norm_groups")
        return self


@dataclass(frozen=True)
class TrainingDraws:
    """One training batch with its random draws (images after flips, times, noise, labels
    after dropout), made once for the whole batch and then split into micro-batches."""

    x0: Tensor
    t: Tensor
    eps: Tensor
    labels: Tensor | None

    def __len__(self) -> int:
        return self.x0.shape[0]

    def split(self, parts: int) -> list[TrainingDraws]:
        """``parts`` micro-batches, cut where ``Batch.split`` cuts."""

        def cut(x: Tensor | None) -> Sequence[Tensor | None]:
            return x.tensor_split(parts) if x is not None else [None] * parts

        cols = (cut(self.x0), cut(self.t), cut(self.eps), cut(self.labels))
        return [TrainingDraws(*row) for row in zip(*cols, strict=True)]


# --------------------------------------------------------------------------- generator


@GENERATORS.register("vdpm")
class VDPM(Generator):
    """Continuous-time diffusion with a v-predicting UNet (see the module docstring)."""

    Config = VDPMConfig

    def __init__(self, config: VDPMConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.conditional = config.class_conditional and data.num_classes > 0
        self.null_label = data.num_classes  # the extra "no label" class of guidance
        self.schedule = logsnr_schedule(
            config.logsnr_schedule, config.logsnr_min, config.logsnr_max
        )
        self.net = self._build_net().to(self.device)
        self.opt = torch.optim.AdamW(
            self.net.parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
        )
        self.step = 0

    def _build_net(self) -> nn.Module:
        c = self.config
        return build_unet(
            image_size=self.image_size,
            in_channels=self.data.channels,
            out_channels=self.data.channels * OUTPUT_CHANNELS[c.model_out_type],
            channels=c.channels,
            channel_mult=c.channel_mult,
            num_res_blocks=c.num_res_blocks,
            attn_resolutions=c.attn_resolutions,
            dropout=c.dropout,
            num_class_embeds=self.data.num_classes + 1 if self.conditional else 0,
            norm_groups=c.norm_groups,
            scale_shift_norm=c.scale_shift_norm,
            resblock_resample=c.resblock_resample,
        )

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    # ----------------------------------------------------------------- network

    def _net_labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        if not self.conditional:
            return None
        return net_labels(labels, n, self.null_label, self.device)

    def _net_output(self, z: Tensor, logsnr: Tensor, labels: Tensor | None) -> Tensor:
        """The raw network output at log-SNR ``logsnr`` (one value or one per sample)."""
        # The net sees the cosine-schedule time of lambda (Salimans & Ho's "inv_cos" input),
        # x 1000 so diffusers' sinusoidal embedding spans DDPM's integer-step range.
        t_in = torch.atan(torch.exp(-0.5 * logsnr.to(torch.float64))) * (2000.0 / math.pi)
        return unet_apply(self.net, z, t_in.to(z.device, z.dtype), labels)

    # ----------------------------------------------------------------- training

    def _draw_time(self, n: int) -> Tensor:
        """Training times: U(0, 1), or i / T with i uniform in 1..T (global RNG)."""
        big_t = self.config.train_timesteps
        if big_t == 0:
            return torch.rand(n, device=self.device, dtype=torch.float64)
        i = torch.randint(1, big_t + 1, (n,), device=self.device)
        return i.to(torch.float64) / big_t

    def draw(self, batch: Batch) -> TrainingDraws:
        """Flips, t, noise and label dropout for the whole batch, from the global RNG
        (seeded by the harness)."""
        x0 = batch.images.to(self.device)
        n = x0.shape[0]
        if self.config.hflip:
            x0 = random_hflip(x0)
        t = self._draw_time(n)
        eps = torch.randn(x0.shape, device=self.device, dtype=x0.dtype)
        labels = self._net_labels(batch.labels, n)
        if labels is not None:
            labels = drop_labels(labels, self.config.p_uncond, self.null_label)
        return TrainingDraws(x0, t, eps, labels)

    def _mse_weight(self, t: Tensor, logsnr: Tensor) -> Tensor:
        return MSE_WEIGHTS[self.config.reweight_type](logsnr)

    def _kl_weight(self, t: Tensor, logsnr: Tensor) -> Tensor:
        big_t = self.config.train_timesteps
        if big_t:
            return kl_weight_discrete(self.schedule, t, big_t)
        return kl_weight_continuous(self.schedule, t)

    def _x_weight(self, t: Tensor, logsnr: Tensor) -> Tensor:
        """The x-space weight w of the configured loss at times ``t``."""
        weights = {"mse": self._mse_weight, "kl": self._kl_weight}
        return weights[self.config.loss_type](t, logsnr)

    def losses(self, draws: TrainingDraws) -> Tensor:
        """Per-sample loss of one (micro-)batch (module docstring, "Losses")."""
        x0 = draws.x0
        logsnr = self.schedule(draws.t)
        z = diffuse(x0, draws.eps, logsnr)
        out = self._net_output(z, logsnr, draws.labels)
        x_pred, eps_pred = OUTPUT_TO_X0_EPS[self.config.model_out_type](z, out, logsnr)
        v_pred = v_from_x0_eps(x_pred, eps_pred, logsnr)
        v = v_from_x0_eps(x0, draws.eps, logsnr)
        return weighted_v_loss(v_pred, v, self._x_weight(draws.t, logsnr), logsnr)

    def _set_lr(self) -> None:
        set_warmup_lr(self.opt, self.config.lr, self.step, self.config.warmup_steps)

    def train_step(self, batch: Batch) -> dict[str, float]:
        draws = self.draw(batch)  # before splitting: micro-batching never changes the draws
        parts = min(self.config.num_accum, len(batch))
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for i, micro in enumerate(draws.split(parts)):
            share = len(micro) / len(batch)  # so the summed gradient is the batch mean's
            with gradient_sync([self.net], sync=i == parts - 1):
                loss = self.losses(micro).mean() * share
                loss.backward()
            total += loss.item()
        self.step += 1
        self._set_lr()
        logs = {"loss": total}
        if self.config.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
            logs["grad_norm"] = float(norm)
        self.opt.step()
        return logs

    # ----------------------------------------------------------------- sampling

    def _steps(self, steps: int | str | None) -> int:
        if steps is None:
            return self.config.sample_steps
        try:
            n = int(steps)
        except ValueError:
            raise ValueError(f"vdpm sample steps must be a whole number, got {steps!r}") from None
        if not 1 <= n < 65_536:
            raise ValueError(f"vdpm sample steps must be in 1..65535, got {n}")
        return n

    def _guidance(self, guidance: float | None, labels: Tensor | None) -> float:
        """The effective guidance strength: 0 when there is no label to guide towards."""
        w = self.config.w_guide if guidance is None else float(guidance)
        if w < 0:
            raise ValueError(f"guidance must be >= 0, got {w}")
        if w and not self.conditional:
            raise ValueError(
                "guidance needs a class-conditional model: set config class_conditional = "
                "true on a labelled data set, or drop the guidance"
            )
        return w if labels is not None else 0.0

    def _denoiser(self, labels: Tensor | None, w: float) -> Denoiser:
        """(z, logsnr) -> (x_pred, eps_pred), guided when w > 0, x_pred clipped if asked."""
        convert = OUTPUT_TO_X0_EPS[self.config.model_out_type]

        def denoise(z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
            cond = self._net_labels(labels, z.shape[0])
            if w:
                null = torch.full_like(cond, self.null_label)
                out_c, out_u = self._net_output(
                    torch.cat([z, z]), logsnr, torch.cat([cond, null])
                ).chunk(2)
                # Guiding the raw output equals guiding eps, x_pred or v: each is affine
                # in it at fixed z_t.
                out = guide(out_c, out_u, w)
            else:
                out = self._net_output(z, logsnr, cond)
            x0, eps = convert(z, out, logsnr)
            if self.config.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
                eps = eps_from_x0(z, x0, logsnr)
            return x0, eps

        return denoise

    def _step_fn(self) -> Step:
        return SAMPLERS[self.config.sampler](self.config)

    def logsnr_grid(self, steps: int) -> Tensor:
        """lambda(t_i) for t_i = i / N, i = N .. 0 (float64)."""
        t = torch.arange(steps, -1, -1, dtype=torch.float64) / steps
        return self.schedule(t)

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        labels: Tensor | None = None,
        steps: int | str | None = None,
        guidance: float | None = None,
    ) -> Tensor:
        n_steps = self._steps(steps)
        w = self._guidance(guidance, labels)
        shape = (self.data.channels, self.image_size, self.image_size)
        z = seeded_randn(seeds, shape, self.device, stream=0)  # z_1 ~ N(0, I)

        def noise(i: int) -> Tensor:  # stream 1 + i: step i's noise, by seed
            return seeded_randn(seeds, shape, self.device, stream=1 + i)

        with eval_mode(self.net):  # no dropout: an image depends only on its seed
            x = sample_loop(
                self._denoiser(labels, w), z, self.logsnr_grid(n_steps), self._step_fn(), noise
            )
        return x.clamp_(-1.0, 1.0)

    def nfe(self, steps: int | str | None = None, guidance: float | None = None) -> int:
        """Network evaluations per image: N, doubled under classifier-free guidance."""
        w = self.config.w_guide if guidance is None else guidance
        return self._steps(steps) * (2 if w and self.conditional else 1)
