"""Gaussian diffusion maths of DDPM, improved DDPM and DDIM, independent of any network.

Notation follows the papers: ``betas`` (beta_t), ``alphas_cumprod`` (alpha-bar_t),
``posterior_variance`` (beta-tilde_t). Timesteps are 0-based: index t here is the paper's
t + 1, so index 0 is the last denoising step (the decoder p(x_0 | x_1)).

Papers: Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models" (DDPM);
Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (iDDPM);
Song, Meng, Ermon 2020, "Denoising Diffusion Implicit Models" (DDIM).
Schedules and every coefficient formed from them (square roots, 1 - alpha-bar, their
ratios) are computed in float64 once and cast to the data's dtype when gathered: cast
before forming 1 - alpha-bar, float32 keeps about 3 digits of it where it is near 1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- schedules


def linear_betas(
    num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None
) -> torch.Tensor:
    """Ho et al. 2020, section 4: beta from 1e-4 to 0.02 over T = 1000 steps.

    For other T the end points are scaled by 1000 / T (as improved-diffusion does) so the
    schedule keeps the same alpha-bar curve; T = 1000 gives exactly the paper's values. Like
    the cosine schedule, betas are clipped at 0.999 (short chains, T <= 20, reach 1).
    ``beta_start`` and ``beta_end`` given: exactly those end points, unscaled (diffusers'
    ``linear``).
    """
    if beta_start is None or beta_end is None:
        scale = 1000.0 / num_timesteps
        beta_start, beta_end = scale * 1e-4, scale * 0.02
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64, device="cpu")
    return betas.clamp(max=0.999)


def scaled_linear_betas(
    num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None
) -> torch.Tensor:
    """Latent diffusion's schedule (diffusers' ``scaled_linear``): sqrt(beta) linear from
    sqrt(beta_start) to sqrt(beta_end), default 0.00085 to 0.012."""
    start = 0.00085 if beta_start is None else beta_start
    end = 0.012 if beta_end is None else beta_end
    roots = torch.linspace(
        math.sqrt(start), math.sqrt(end), num_timesteps, dtype=torch.float64, device="cpu"
    )
    return roots.square().clamp(max=0.999)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha-bar_t = f(t) / f(0), f(t) = cos²((t/T + s)/(1 + s)
    · π/2), beta_t = 1 - alpha-bar_t / alpha-bar_{t-1}, clipped at 0.999."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64, device="cpu") / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


BETA_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "scaled_linear": scaled_linear_betas,
}
RANGED_SCHEDULES = ("linear", "scaled_linear")
"""Schedules whose end points ``beta_start`` / ``beta_end`` may be given."""


def get_betas(
    name: str,
    num_timesteps: int,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> torch.Tensor:
    """The named beta schedule (see ``BETA_SCHEDULES``) with ``num_timesteps`` steps; the end
    points apply to the linear schedules only."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; valid: {', '.join(BETA_SCHEDULES)}")
    if name in RANGED_SCHEDULES:
        return BETA_SCHEDULES[name](num_timesteps, beta_start, beta_end)
    if beta_start is not None or beta_end is not None:
        raise ValueError(f"beta_start / beta_end apply to {' and '.join(RANGED_SCHEDULES)} only")
    return BETA_SCHEDULES[name](num_timesteps)


# --------------------------------------------------------------------------- respacing


@dataclass(frozen=True)
class SamplingPlan:
    """A sampling plan: which original timesteps are visited, ancestrally or with DDIM."""

    kind: Literal["ancestral", "ddim"]
    timesteps: tuple[int, ...]  # kept original timesteps, increasing


def _evenly_spaced(start: int, size: int, count: int) -> list[int]:
    if count > size or count < 1:
        raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
    if count == 1:
        return [start]
    # The position is accumulated as a float, stride by stride, as improved-diffusion's
    # space_timesteps does: round(i * stride) differs from it by one step for some counts.
    stride = (size - 1) / (count - 1)
    kept, position = [], 0.0
    for _ in range(count):
        kept.append(start + round(position))
        position += stride
    return kept


def _sections(num_timesteps: int, counts: Sequence[int]) -> list[int]:
    # iDDPM section 4: split [0, T) into equal sections, take counts[i] evenly spaced steps
    # from section i (sizes differ by at most one, the first ones larger).
    base, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        kept += _evenly_spaced(start, size, count)
        start += size
    return kept


def _ddim_stride(num_timesteps: int, count: int) -> list[int]:
    # Song et al. 2020, section 4.2: a strided sub-sequence 0, k, 2k, ... of exactly ``count``.
    for stride in range(1, num_timesteps + 1):
        kept = list(range(0, num_timesteps, stride))
        if len(kept) == count:
            return kept
    raise ValueError(f"no stride gives exactly {count} DDIM steps out of {num_timesteps}")


STEPS_GRAMMAR = (
    "N (N evenly spaced ancestral steps, 1..T; T = the full chain), 'ddimN' (N strided DDIM "
    "steps) or section counts joined by '+' such as '10+15+20' (iDDPM's respacing)"
)


def parse_steps(steps: int | str, num_timesteps: int) -> SamplingPlan:
    """A sampling plan from a step setting (``STEPS_GRAMMAR``): ``N`` or ``"N"`` (N evenly
    spaced ancestral steps; T is the full chain), ``"ddimN"`` (N strided DDIM steps) or
    ``"a+b+c"`` (iDDPM sections: the T steps split into equal sections with a, b, c steps
    each). ``ValueError`` names the grammar otherwise; commas are refused because they
    separate lists of settings (``bench speed --steps 50,ddim100``)."""
    text = str(steps).strip().lower()
    if "," in text:
        raise ValueError(
            f"steps {steps!r}: write iDDPM sections with '+', e.g. "
            f"{text.replace(',', '+')!r} (commas separate lists of settings)"
        )
    try:
        if text.startswith("ddim"):
            return SamplingPlan("ddim", tuple(_ddim_stride(num_timesteps, int(text[4:]))))
        counts = [int(part) for part in text.split("+")]
        return SamplingPlan("ancestral", tuple(_sections(num_timesteps, counts)))
    except ValueError as exc:
        raise ValueError(
            f"steps {steps!r} is not a valid setting for T = {num_timesteps} ({exc}); use "
            + STEPS_GRAMMAR
        ) from None


# --------------------------------------------------------------------------- distributions


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )  # fmt: skip


#: The normal CDFs of the decoder likelihood: the exact one (``torch.special.ndtr``) or the
#: tanh approximation improved-diffusion and guided-diffusion use (for like-for-like bits/dim).
DECODER_CDFS = ("exact", "tanh")


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF (Page 1977),
    0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x³))): what OpenAI's decoder likelihood uses;
    within about 2e-4 of the exact CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, cdf: str = "exact"
) -> torch.Tensor:
    """Ho et al. 2020, eq. 13: log-probability (nats) of the 8-bit bin around each x in
    [-1, 1] under N(mean, exp(log_scale)²); the edge bins extend to ±infinity.

    ``cdf="exact"`` integrates with the exact normal CDF (log-space at the edge bins);
    ``cdf="tanh"`` with OpenAI's tanh approximation, as improved-diffusion computes it
    (bits/dim then differ by about 1e-3 from the exact ones)."""
    inv_std = torch.exp(-log_scale)
    upper = (x - mean + 1.0 / 255.0) * inv_std
    lower = (x - mean - 1.0 / 255.0) * inv_std
    if cdf == "tanh":
        cdf_upper, cdf_lower = approx_standard_normal_cdf(upper), approx_standard_normal_cdf(lower)
        log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
        log_sf_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
        mid = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    elif cdf == "exact":
        log_cdf_upper = torch.special.log_ndtr(upper)  # bin x = -1: (-inf, upper]
        log_sf_lower = torch.special.log_ndtr(-lower)  # bin x = +1: [lower, inf)
        mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    else:
        raise ValueError(f"unknown decoder cdf {cdf!r}; valid: {', '.join(DECODER_CDFS)}")
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mid))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (per-image average)."""
    return x.flatten(1).mean(dim=1)


# --------------------------------------------------------------------------- the process


@dataclass
class Prediction:
    """The reverse-process Gaussian p(x_{t-1} | x_t) and the x_0 it implies."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor


class GaussianDiffusion:
    """Forward process q, its posteriors and the reverse-process steps for one beta schedule.

    ``timestep_map[t]`` is the original timestep of step t (identity unless respaced).
    Tables are made on the CPU explicitly, also under a ``torch.device("meta")`` context
    (where the harness builds generators to check a checkpoint's shapes), and copied to
    the data's device on first use.
    """

    def __init__(self, betas: torch.Tensor, timestep_map: Sequence[int] | None = None) -> None:
        betas = betas.to(torch.float64)
        if betas.dim() != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-d tensor in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        n = self.num_timesteps
        self.timestep_map = torch.tensor(
            timestep_map if timestep_map is not None else range(n), device="cpu"
        )
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64, device="cpu"), self.alphas_cumprod[:-1]]
        )
        # Ho et al. eq. 7: beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) · beta_t.
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # beta-tilde is 0 at the first step: its log is taken from the next step (iDDPM);
        # a one-step process has none, and uses beta there.
        self.first_variance = self.posterior_variance[1:2] if n > 1 else betas[:1]
        clipped = torch.cat([self.first_variance, self.posterior_variance[1:]])
        self.posterior_log_variance_clipped = torch.log(clipped)
        # Ho et al. eq. 7: mu-tilde = c0 · x_0 + ct · x_t.
        self.posterior_coef_x0 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.posterior_coef_xt = (
            (1.0 - self.alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - self.alphas_cumprod)
        )  # fmt: skip
        self.log_betas = torch.log(betas)
        abar = self.alphas_cumprod
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        self.sqrt_alphas_cumprod_prev = self.alphas_cumprod_prev.sqrt()
        # DDIM's sigma_t / eta (Song et al. eq. 16).
        prev = self.alphas_cumprod_prev
        self.ddim_sigma_per_eta = ((1.0 - prev) / (1.0 - abar) * (1.0 - abar / prev)).sqrt()
        self._ddim_eps_coef: dict[float, torch.Tensor] = {}
        # fixed_large: sigma² = beta_t (Ho et al. section 3.2); at t = 0 beta-tilde_1
        # instead, as iDDPM does, for a better decoder likelihood (no noise is added there).
        self.log_large = torch.log(torch.cat([self.first_variance, betas[1:]]))
        # Device/dtype copies of the tables, made on first use: sampling looks them up at
        # every step, and a host-to-device copy per lookup would stall a GPU each time.
        self._copies: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def from_schedule(
        cls,
        name: str,
        num_timesteps: int,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> GaussianDiffusion:
        return cls(get_betas(name, num_timesteps, beta_start, beta_end))

    def respaced(self, timesteps: Sequence[int]) -> GaussianDiffusion:
        """iDDPM section 4: the process on a subset S of timesteps, with
        beta_{S_i} = 1 - alpha-bar_{S_i} / alpha-bar_{S_{i-1}} so alpha-bar is unchanged on S."""
        kept = sorted(set(int(t) for t in timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"respaced timesteps must lie in [0, {self.num_timesteps})")
        abar = self.alphas_cumprod[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64, device="cpu"), abar[:-1]])
        return GaussianDiffusion(1.0 - abar / prev, self.timestep_map[kept].tolist())

    # ----------------------------------------------------------------- helpers

    def table(
        self, values: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """One of this process's tables on ``device`` (in ``dtype``), copied once."""
        key = (id(values), torch.device(device), dtype or values.dtype)
        if key not in self._copies:
            self._copies[key] = values.to(device=device, dtype=key[2])
        return self._copies[key]

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (N, 1, 1, ...) to broadcast against ``like``."""
        out = self.table(values, like.device, like.dtype)[t.to(like.device)]
        return out.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Ho et al. eq. 4: x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ho et al. eq. 6-7: mean, variance and clipped log-variance of q(x_{t-1}|x_t, x_0)."""
        mean = (
            self._at(self.posterior_coef_x0, t, xt) * x0
            + self._at(self.posterior_coef_xt, t, xt) * xt
        )
        var = self._at(self.posterior_variance, t, xt)
        return mean, var, self._at(self.posterior_log_variance_clipped, t, xt)

    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Ho et al. eq. 4 solved for x_0: x_t / sqrt(alpha-bar) - sqrt(1 / alpha-bar - 1) eps."""
        return (
            self._at(self.sqrt_recip_alphas_cumprod, t, xt) * xt
            - self._at(self.sqrt_recipm1_alphas_cumprod, t, xt) * eps
        )

    def eps_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Salimans & Ho 2022: with v = sqrt(abar) eps - sqrt(1 - abar) x_0,
        eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, xt) * v
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, xt) * xt
        )

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The v of ``x0`` and ``noise`` at t: sqrt(abar) eps - sqrt(1 - abar) x_0."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x0) * noise
            - self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Ho et al. eq. 4 solved for eps."""
        return (self._at(self.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / self._at(
            self.sqrt_recipm1_alphas_cumprod, t, xt
        )

    # ----------------------------------------------------------------- variances

    def _fixed_small(self, t: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None):
        return self._at(self.posterior_log_variance_clipped, t, like)

    def _fixed_large(self, t: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None):
        return self._at(self.log_large, t, like)

    def _learned_range(self, t: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None):
        if v is None:
            raise ValueError("learned_range variance needs the network's v output")
        # iDDPM eq. 15: Sigma = exp(v log beta_t + (1 - v) log beta-tilde_t).
        log_beta = self._at(self.log_betas, t, like)
        log_tilde = self._at(self.posterior_log_variance_clipped, t, like)
        return v * log_beta + (1.0 - v) * log_tilde

    def log_variance(
        self, kind: str, t: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log Sigma_theta(x_t, t) for variance ``kind`` (fixed_small, fixed_large or
        learned_range, the last interpolating with ``v`` in [0, 1] per pixel)."""
        rules = {
            "fixed_small": self._fixed_small,
            "fixed_large": self._fixed_large,
            "learned_range": self._learned_range,
        }
        if kind not in rules:
            raise ValueError(f"unknown variance {kind!r}; valid: {', '.join(rules)}")
        return rules[kind](t, like, v).expand_as(like)

    # ----------------------------------------------------------------- reverse process

    def p_mean_variance(
        self,
        eps: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        variance: str,
        v: torch.Tensor | None = None,
        clip: bool = True,
    ) -> Prediction:
        """p(x_{t-1} | x_t) from a predicted eps: the posterior mean at the predicted x_0
        (Ho et al. eq. 11 when unclipped) and the chosen variance."""
        x0 = self.x0_from_eps(xt, t, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior(x0, xt, t)
        log_var = self.log_variance(variance, t, xt, v)
        return Prediction(mean, log_var, x0)

    def ancestral_step(
        self, pred: Prediction, t: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Ho et al. algorithm 2: x_{t-1} = mean + sigma z, with no noise at t = 0."""
        if noise is None:
            return pred.mean
        nonzero = (t != 0).to(pred.mean.dtype).view(-1, *([1] * (pred.mean.dim() - 1)))
        return pred.mean + nonzero * torch.exp(0.5 * pred.log_variance) * noise

    def ddim_step(
        self,
        eps: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        eta: float,
        noise: torch.Tensor | None,
        clip: bool = True,
    ) -> torch.Tensor:
        """Song et al. eq. 12 with sigma_t from eq. 16 scaled by ``eta`` (0: deterministic;
        ``noise`` may then be None). With ``clip`` the predicted x_0 is clipped to [-1, 1]
        and eps recomputed from it."""
        x0 = self.x0_from_eps(xt, t, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.eps_from_x0(xt, t, x0)
        if eta not in self._ddim_eps_coef:  # sqrt(1 - alpha-bar_prev - sigma²), in float64
            sigma = eta * self.ddim_sigma_per_eta
            coef = (1.0 - self.alphas_cumprod_prev - sigma**2).clamp(min=0).sqrt()
            self._ddim_eps_coef[eta] = coef
        out = (
            self._at(self.sqrt_alphas_cumprod_prev, t, xt) * x0
            + self._at(self._ddim_eps_coef[eta], t, xt) * eps
        )
        if noise is None:
            return out
        return out + eta * self._at(self.ddim_sigma_per_eta, t, xt) * noise

    # ----------------------------------------------------------------- likelihood

    def vlb_terms(
        self,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        pred: Prediction,
        cdf: str = "exact",
    ) -> torch.Tensor:
        """Per-image L_t in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and
        the decoder NLL -log p(x_0|x_1) at t = 0 (Ho et al. eq. 5; iDDPM eq. 4-6), its bins
        integrated with the normal CDF ``cdf`` (``DECODER_CDFS``).

        Computed in float64: in float32 a KL near 0 cancels to small negative values."""
        x0, xt = x0.double(), xt.double()
        true_mean, _, true_log_var = self.q_posterior(x0, xt, t)
        mean, log_var = pred.mean.double(), pred.log_variance.double()
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / LN2
        nll = mean_flat(-discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var, cdf)) / LN2
        return torch.where(t.to(kl.device) == 0, nll, kl).to(pred.mean.dtype)

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-image L_T = KL(q(x_T|x_0) || N(0, I)) in bits/dim (no parameters to learn)."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.long)
        mean = self._at(self.sqrt_alphas_cumprod, t, x0) * x0
        log_var = self._at(self.log_one_minus_alphas_cumprod, t, x0).expand_as(x0)
        zero = torch.zeros_like(x0)
        return mean_flat(normal_kl(mean, log_var, zero, zero)) / LN2


# --------------------------------------------------------------------------- timestep sampling


class UniformTimesteps:
    """t ~ U{0..T-1}, weights 1 (Ho et al. algorithm 1)."""

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps

    def sample(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_timesteps, (n,), device=device)
        return t, torch.ones(n, device=device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling ignores the losses."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the sampler has learnt (saved with the training state); none here."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise KeyError(f"uniform timestep sampling has no state, got {sorted(state)}")


class LossAwareTimesteps(UniformTimesteps):
    """iDDPM eq. 18: p_t ∝ sqrt(E[L_t²]) over the last ``history`` losses of each t, uniform
    until every t has a full history; importance weights 1 / (T p_t) keep the loss unbiased."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_mix: float = 1e-3) -> None:
        super().__init__(num_timesteps)
        self.history = torch.zeros(num_timesteps, history, dtype=torch.float64, device="cpu")
        self.counts = torch.zeros(num_timesteps, dtype=torch.long, device="cpu")
        self.uniform_mix = uniform_mix  # keeps every p_t > 0 (improved-diffusion uses 1e-3)

    def probabilities(self) -> torch.Tensor:
        """The current p_t (uniform while any history is still filling)."""
        n = self.num_timesteps
        if (self.counts < self.history.shape[1]).any():
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        p = self.history.pow(2).mean(dim=1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_mix) + self.uniform_mix / n

    def sample(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.probabilities()
        t = torch.multinomial(p, n, replacement=True)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Push each (t, loss) into t's history (a ring buffer of the latest values)."""
        size = self.history.shape[1]
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            self.history[step, self.counts[step] % size] = loss
            self.counts[step] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"history": self.history.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"history", "counts"} or state["history"].shape != self.history.shape:
            raise KeyError("not the state of this loss-aware timestep sampler")
        self.history = state["history"].to(torch.float64).cpu().clone()
        self.counts = state["counts"].to(torch.long).cpu().clone()


TIMESTEP_SAMPLERS: dict[str, type[UniformTimesteps]] = {
    "uniform": UniformTimesteps,
    "loss_aware": LossAwareTimesteps,
}
