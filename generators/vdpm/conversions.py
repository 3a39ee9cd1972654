"""Conversions between VDPM's network outputs (x_0, eps, v, both) and (x_0, eps) at a
log-SNR (see ``genbench.generators.vdpm``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


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
