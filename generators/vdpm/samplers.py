"""VDPM's samplers: DDIM and ancestral steps between two log-SNRs, and the loop that runs
them from t = 1 to t = 0 (see ``genbench.generators.vdpm``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from genbench.generators.vdpm.conversions import diffuse

Tensor = torch.Tensor


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
