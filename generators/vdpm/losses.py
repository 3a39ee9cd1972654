"""VDPM's loss weightings: the x-space weights w(lambda) of the MSE and KL losses, and the
weighted v-loss that evaluates them (see ``genbench.generators.vdpm``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from genbench.generators.vdpm.schedules import Schedule

Tensor = torch.Tensor


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
