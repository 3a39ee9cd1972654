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
- ``legacy``: Ho et al. 2020's discrete linear betas (1e-4 to 0.02 over T = 1000 steps,
  section 4) made continuous: beta(u) = beta_1 + u (beta_T - beta_1), F(t) = int_0^t
  log(1 - beta(u)) du, and log alpha^2(t) = T F(t), the continuum limit of DDPM's log
  alpha-bar, so alpha^2(t) is DDPM's alpha-bar at step t T (0.0784 at t = 1/2 against the
  discrete 0.0786; lambda(1) = -10.1). lambda is clamped into the log-SNR bounds, which
  only the first 2e-8 of t reaches.

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

The modules: ``schedules`` (lambda(t)), ``conversions`` (network outputs <-> (x_0, eps)),
``losses`` (weightings), ``samplers`` (DDIM, ancestral, the loop) and ``generator`` (the
config and the registered ``VDPM``).
"""

from genbench.generators.vdpm.conversions import (
    OUTPUT_FROM_X0_EPS,
    OUTPUT_TO_X0_EPS,
    diffuse,
    eps_from_v,
    eps_from_x0,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from genbench.generators.vdpm.generator import VDPM, TrainingDraws, VDPMConfig, VDPMSettings
from genbench.generators.vdpm.losses import MSE_WEIGHTS, kl_weight_continuous, kl_weight_discrete
from genbench.generators.vdpm.samplers import ancestral_step, ddim_step, sample_loop
from genbench.generators.vdpm.schedules import LOGSNR_SCHEDULES, logsnr_schedule

__all__ = [
    "LOGSNR_SCHEDULES",
    "MSE_WEIGHTS",
    "OUTPUT_FROM_X0_EPS",
    "OUTPUT_TO_X0_EPS",
    "VDPM",
    "TrainingDraws",
    "VDPMConfig",
    "VDPMSettings",
    "ancestral_step",
    "ddim_step",
    "diffuse",
    "eps_from_v",
    "eps_from_x0",
    "kl_weight_continuous",
    "kl_weight_discrete",
    "logsnr_schedule",
    "sample_loop",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
