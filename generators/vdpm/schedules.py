"""VDPM's log-SNR schedules lambda(t), t in [0, 1] (see ``genbench.generators.vdpm``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor
Schedule = Callable[[Tensor], Tensor]
"""t (float64) -> lambda(t) (float64)."""


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
_DDPM_STEPS = 1000


def _ddpm_log_alpha_integral(t: Tensor) -> Tensor:
    """F(t) = int_0^t log(1 - beta(u)) du for DDPM's linear beta(u) (closed form)."""
    d0, slope = 1.0 - _BETA_1, _BETA_T - _BETA_1  # 1 - beta(u) = d0 - slope u

    def antiderivative(d: Tensor) -> Tensor:  # int log(d) dd = d log d - d
        return d * torch.log(d) - d

    start = antiderivative(torch.as_tensor(d0, dtype=t.dtype))
    return (start - antiderivative(d0 - slope * t)) / slope


def _logsnr_legacy(t: Tensor, lmin: float, lmax: float) -> Tensor:
    # DDPM's alpha-bar itself, not stretched: log alpha-bar(t) = T F(t) with T = 1000 is the
    # continuum limit of the cumulative product of Ho et al.'s 1000 betas (alpha-bar(1/2) =
    # 0.0784 against the discrete 0.0786). lambda(1) = -10.1; only t < 2e-8 reaches the upper
    # bound, so the bounds merely clamp.
    log_alpha2 = _DDPM_STEPS * _ddpm_log_alpha_integral(t)
    # lambda = log alpha^2 - log(1 - alpha^2), the latter as log(-expm1(.)) for precision.
    lam = log_alpha2 - torch.log(-torch.expm1(log_alpha2))
    return lam.clamp(min=lmin, max=lmax)


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
