"""EDM (Karras, Aittala, Aila, Laine 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models").

The network F is wrapped by a preconditioning into a denoiser
D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7), trained with the weighted
denoising loss of eq. 8 at noise levels drawn from a training distribution p_train(sigma).
Table 1 gives three such designs, all available here: ``edm`` (lognormal sigma, sigma_data
scaling), ``vp`` and ``ve`` (Song et al. 2021, recast as denoisers), so the paper's ablations
can be benchmarked. Sampling integrates the probability-flow ODE over the rho-schedule of
eq. 5 with Heun's method (Algorithm 1) or Euler, optionally with stochastic churn
(Algorithm 2). Samplers are plain functions over a denoiser callable ``D(x, sigma)``, so the
exact denoiser of a Gaussian plugs into the same code in the tests.

Classifier-free guidance (Ho & Salimans 2022): trained by replacing the label with a null
class with probability ``label_dropout``; sampled with genbench's one guidance scale s
(``genbench.generators.guidance``): D = D_null + s (D_label - D_null), so s = 1 is the plain
conditional model (no extra NFE), s = 0 the unconditional one, and Ho & Salimans' w is s - 1.

The network is EDM's DDPM++ (``genbench.generators.songunet``), its loss is summed over
pixels and averaged over the batch as EDM's, and ``augment = p`` turns on EDM's non-leaking
augmentation (``genbench.generators.augment``: 9 augmentation labels condition the network,
zero while sampling). Not reproduced: float64 sampling.

``experts = K`` (eDiff-I, Balaji et al. 2022) makes the network an ensemble of K copies
(``genbench.generators.experts``), each owning one interval of noise levels
(``expert_boundaries``, default equal in log sigma over the sampling range): trained from the
same initial weights, each only at its own noise levels, and sampled by switching experts
with the noise level. K = 1 is the plain model.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from genbench.core.noise import seeded_randn
from genbench.generators.augment import AUGMENT_DIM, augment
from genbench.generators.base import (
    GENERATORS,
    Batch,
    DataShape,
    SteppedGenerator,
    Watch,
    eval_mode,
)
from genbench.generators.classifier import NoisyClassifier
from genbench.generators.edm_checkpoint import import_edm_state, is_edm_state
from genbench.generators.experts import ExpertNets, check_boundaries, log_spaced_boundaries
from genbench.generators.guidance import (
    ClassifierGuidedSettings,
    GuidedSettings,
    check_classifier_scale,
    check_guidance,
    classifier_guided,
    drop_labels,
    guide,
    is_guided,
    net_labels,
)
from genbench.generators.songunet import SongUNetConfig
from genbench.generators.training import Loss, LRSchedule, Nets, OptimizerSpec, Phase, Training

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
"""D(x, sigma): the denoised estimate of x (N, ...) at noise level sigma."""

StepNoise = Callable[[int], torch.Tensor]
"""Step index i -> the standard normal churn noise of step i (same shape as x)."""


# --------------------------------------------------------------------------- preconditioning


@dataclass(frozen=True)
class Coefficients:
    """The four scalings of eq. 7, one value per sample (shape (N,))."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


class Preconditioning(ABC):
    """One column of Table 1: network scalings, training noise levels and loss weights."""

    sigma_min: float = 0.0  # noise levels the network is trained on (the sampler keeps to them)
    sigma_max: float = math.inf

    @abstractmethod
    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """c_skip, c_out, c_in, c_noise at noise levels ``sigma`` (N,)."""

    @abstractmethod
    def sample_sigma(self, n: int, device: torch.device) -> torch.Tensor:
        """``n`` training noise levels from p_train (global torch RNG)."""

    @abstractmethod
    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) of eq. 8."""


class EDMPreconditioning(Preconditioning):
    """Table 1, "EDM" column: unit-variance network inputs and targets for every sigma."""

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd2, s2 = self.sigma_data**2, sigma**2
        # Table 1 (EDM): c_skip, c_out, c_in, c_noise.
        return Coefficients(
            c_skip=sd2 / (s2 + sd2),
            c_out=sigma * self.sigma_data / (s2 + sd2).sqrt(),
            c_in=1.0 / (s2 + sd2).sqrt(),
            c_noise=sigma.log() / 4,
        )

    def sample_sigma(self, n: int, device: torch.device) -> torch.Tensor:
        # Table 1 (EDM): ln(sigma) ~ N(P_mean, P_std^2).
        return (torch.randn(n, device=device) * self.p_std + self.p_mean).exp()

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        # Table 1 (EDM): lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class VPPreconditioning(Preconditioning):
    """Table 1, "VP" column (Song et al. 2021's DDPM++ cont. as a denoiser)."""

    beta_d, beta_min, M, eps_t = 19.9, 0.1, 1000, 1e-5

    def __init__(self) -> None:
        self.sigma_min = float(self.sigma_of_t(torch.tensor(self.eps_t, dtype=torch.float64)))
        self.sigma_max = float(self.sigma_of_t(torch.tensor(1.0, dtype=torch.float64)))

    def sigma_of_t(self, t: torch.Tensor) -> torch.Tensor:
        # Table 1 (VP): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        # Table 1 (VP): sigma^-1(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min)
        # / beta_d.
        root = (self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt()
        return (root - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return Coefficients(
            c_skip=torch.ones_like(sigma),
            c_out=-sigma,
            c_in=1.0 / (sigma**2 + 1).sqrt(),
            c_noise=(self.M - 1) * self.t_of_sigma(sigma),
        )

    def sample_sigma(self, n: int, device: torch.device) -> torch.Tensor:
        # Table 1 (VP): sigma = sigma(t), t ~ U(eps_t, 1).
        t = torch.rand(n, device=device) * (1 - self.eps_t) + self.eps_t
        return self.sigma_of_t(t)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1.0 / sigma**2  # Table 1 (VP): lambda = 1 / sigma^2


class VEPreconditioning(Preconditioning):
    """Table 1, "VE" column (Song et al. 2021's NCSN++ cont. as a denoiser)."""

    sigma_min, sigma_max = 0.02, 100.0

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return Coefficients(
            c_skip=torch.ones_like(sigma),
            c_out=sigma,
            c_in=torch.ones_like(sigma),
            c_noise=(0.5 * sigma).log(),  # Table 1 (VE): c_noise = ln(sigma / 2)
        )

    def sample_sigma(self, n: int, device: torch.device) -> torch.Tensor:
        # Table 1 (VE): ln(sigma) ~ U(ln sigma_min, ln sigma_max).
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (torch.rand(n, device=device) * (hi - lo) + lo).exp()

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1.0 / sigma**2  # Table 1 (VE): lambda = 1 / sigma^2


PRECONDITIONINGS: dict[str, Callable[[EDMConfig], Preconditioning]] = {
    "edm": lambda c: EDMPreconditioning(c.sigma_data, c.p_mean, c.p_std),
    "vp": lambda c: VPPreconditioning(),
    "ve": lambda c: VEPreconditioning(),
}


def loss_per_sample(
    D: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    precond: Preconditioning,
    y: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """lambda(sigma) ||D(y + n; sigma) - y||^2 summed over pixels, per image (eq. 8; EDM's
    training loop sums over pixels and averages over the batch), with n = sigma * ``noise``
    (``noise`` standard normal)."""
    n = noise * _per_row(sigma, y)
    err = (D(y + n, sigma) - y).square().flatten(1).sum(1)
    return precond.loss_weight(sigma) * err


def _per_row(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Churn:
    """Algorithm 2's stochasticity: S_churn, S_tmin, S_tmax, S_noise."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0


def sigma_steps(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """The ``steps`` + 1 noise levels t_0 > ... > t_{N-1} = sigma_min, t_N = 0 (float64)."""
    if steps < 1:
        raise ValueError(f"need at least one sampling step, got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    # Eq. 5: t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, t_N = 0.
    t = (hi + i / max(steps - 1, 1) * (lo - hi)) ** rho
    return torch.cat([t, t.new_zeros(1)])


def heun_step(
    D: Denoiser, x: torch.Tensor, t_cur: float, t_next: float, order: int
) -> torch.Tensor:
    """One step from t_cur to t_next: Euler, plus Heun's correction when order 2 and t_next > 0."""
    d = (x - D(x, t_cur)) / t_cur  # Algorithm 1, line 4: dx/dt = (x - D(x; t)) / t
    x_next = x + (t_next - t_cur) * d
    if order == 2 and t_next > 0:
        d_next = (x_next - D(x_next, t_next)) / t_next  # Algorithm 1, lines 7-8
        x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d_next)
    return x_next


def sample_ode(
    D: Denoiser, noise: torch.Tensor, sigmas: Sequence[float], order: int = 2
) -> torch.Tensor:
    """Algorithm 1: deterministic sampling from x_0 = t_0 * noise along ``sigmas``."""
    sigmas = [float(s) for s in sigmas]
    x = noise * sigmas[0]
    for t_cur, t_next in pairwise(sigmas):
        x = heun_step(D, x, t_cur, t_next, order)
    return x


def sample_sde(
    D: Denoiser,
    noise: torch.Tensor,
    sigmas: Sequence[float],
    churn: Churn,
    step_noise: StepNoise,
    order: int = 2,
) -> torch.Tensor:
    """Algorithm 2: each step first raises the noise level to t_hat = (1 + gamma_i) t_i."""
    sigmas = [float(s) for s in sigmas]
    n = len(sigmas) - 1
    x = noise * sigmas[0]
    for i, (t_cur, t_next) in enumerate(pairwise(sigmas)):
        inside = churn.s_tmin <= t_cur <= churn.s_tmax
        # Algorithm 2, line 4: gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax].
        gamma = min(churn.s_churn / n, math.sqrt(2) - 1) if inside else 0.0
        if gamma > 0:
            t_hat = t_cur + gamma * t_cur
            eps = churn.s_noise * step_noise(i)  # Algorithm 2, line 5: eps ~ N(0, S_noise^2 I)
            x = x + math.sqrt(t_hat**2 - t_cur**2) * eps  # line 7: x_hat = x + sqrt(...) eps
            t_cur = t_hat
        x = heun_step(D, x, t_cur, t_next, order)
    return x


ORDERS = {"heun": 2, "euler": 1}


def _classifier_guided(
    D: Denoiser, classifier: NoisyClassifier, labels: torch.Tensor, scale: float
) -> Denoiser:
    """``D`` moved by classifier guidance: D + s sigma^2 grad_x log p(y | x; sigma), the
    score s_theta = (D - x) / sigma^2 plus s times the classifier's (Dhariwal & Nichol;
    EDM's x at sigma is sqrt(1 + sigma^2) times the classifier's variance-preserving input)."""
    s = scale

    def guided(x: torch.Tensor, sigma: float) -> torch.Tensor:
        root = math.sqrt(1.0 + sigma * sigma)
        grad_vp = classifier.grad_log_prob(x / root, sigma, labels)
        return D(x, sigma) + (s * sigma * sigma / root) * grad_vp

    return guided


def _watched(D: Denoiser, watch: Watch) -> Denoiser:
    """``D`` that also shows each call's (sigma, output) to ``watch``."""

    def watched(x: torch.Tensor, sigma: float) -> torch.Tensor:
        out = D(x, sigma)
        watch(sigma, out.clone())
        return out

    return watched


def sampler_nfe(steps: int, order: int) -> int:
    """Denoiser calls of a sampling run: Heun saves the correction of the last step (to 0)."""
    return order * steps - (order - 1)


# --------------------------------------------------------------------------- the generator


@dataclass(frozen=True)
class TrainingDraws:
    """Everything random in one training update, for the whole batch."""

    images: torch.Tensor
    labels: torch.Tensor | None  # after label dropout; None for an unconditional model
    sigma: torch.Tensor  # (N,) noise levels from p_train
    noise: torch.Tensor  # standard normal, the image's shape
    augment_labels: torch.Tensor | None = None  # (N, 9) with augmentation, else None


class EDMConfig(SongUNetConfig):
    """EDM hyper-parameters; defaults are the paper's class-conditional CIFAR-10 setting
    (DDPM++ network and training settings of its appendix), plus label dropout for
    classifier-free guidance, except the augmentation: off by default, 0.12 in
    ``cifar10.toml``."""

    precond: Literal["edm", "vp", "ve"] = Field("edm", description="Table 1 column")
    sigma_data: float = Field(0.5, gt=0)
    p_mean: float = Field(-1.2, description="mean of ln(sigma) in training")
    p_std: float = Field(1.2, gt=0, description="std of ln(sigma) in training")
    # network: EDM's DDPM++ (SongUNetConfig's fields), with the paper's dropout and width
    dropout: float = Field(0.13, ge=0, lt=1)
    time_embed_dim: int | None = Field(
        512, ge=1, description="width of the noise embedding (EDM: 4 x 128); None = 4 x channels"
    )
    augment: float = Field(
        0.0,
        ge=0,
        le=1,
        description="EDM's non-leaking augmentation probability p (CIFAR-10: 0.12); 0 = off",
    )
    c_noise_scale: float = Field(
        1.0, gt=0, description="multiplies c_noise before the UNet's positional embedding"
    )
    class_conditional: bool = Field(True, description="use labels when the data has classes")
    label_dropout: float = Field(
        0.1, ge=0, lt=1, description="P(null label) in training, for guidance; EDM used 0"
    )
    # optimiser (EDM's CIFAR-10 setting: Adam, lr 1e-3, 10 Mimg linear warm-up)
    lr: float = Field(1e-3, gt=0)
    lr_rampup_kimg: float = Field(10_000, ge=0, description="linear lr warm-up, kimg")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    # sampler (EDM's CIFAR-10 setting: deterministic Heun, 18 steps = 35 NFE)
    sampler: Literal["heun", "euler"] = "heun"
    steps: int = Field(18, ge=1, description="default number of sampling steps N")
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    s_churn: float = Field(0.0, ge=0, description="Algorithm 2's S_churn; 0 = Algorithm 1")
    s_tmin: float = Field(0.0, ge=0)
    s_tmax: float | None = Field(None, gt=0, description="None = no upper limit (inf)")
    s_noise: float = Field(1.0, gt=0)
    # ensemble of expert denoisers (eDiff-I)
    experts: int = Field(
        1, ge=1, le=16, description="K denoisers, each owning one interval of noise levels"
    )
    expert_boundaries: tuple[float, ...] | None = Field(
        None,
        description="the K - 1 ascending noise levels sigma where one expert hands over to "
        "the next (expert 0 owns the lowest); None = equal in log sigma over the sampling range",
    )

    @model_validator(mode="after")
    def _sigma_range(self) -> EDMConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} must be below sigma_max {self.sigma_max}")
        if self.expert_boundaries is not None:
            check_boundaries(self.expert_boundaries, self.experts)
        return self


@GENERATORS.register("edm")
class EDM(SteppedGenerator):
    """EDM diffusion model over its DDPM++ network; class-conditional with guidance."""

    Config = EDMConfig
    Settings = ClassifierGuidedSettings

    @classmethod
    def is_conditional(cls, config: EDMConfig, data: DataShape) -> bool:
        return config.class_conditional and data.num_classes > 0

    @classmethod
    def check_settings(
        cls, config: EDMConfig, data: DataShape, settings: ClassifierGuidedSettings
    ) -> None:
        check_guidance(settings.guidance, cls.is_conditional(config, data))
        check_classifier_scale(settings.classifier_scale, data.num_classes)

    def __init__(self, config: EDMConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.null_label = data.num_classes  # one extra class embedding: "no label"
        self.precond = PRECONDITIONINGS[config.precond](config)
        net = config.songunet(
            self.image_size,
            data.channels,
            data.channels,
            num_classes=data.num_classes if self.conditional else 0,
            augment_dim=AUGMENT_DIM if config.augment > 0 else 0,
        ).to(self.device)
        self.net: nn.Module = net
        if config.experts > 1:
            self.net = ExpertNets(net, config.experts, self._expert_bounds()).to(self.device)

    def expert_boundaries(self) -> tuple[float, ...]:
        """The noise levels sigma where one expert hands over to the next (none for K = 1)."""
        c = self.config
        if c.expert_boundaries is not None:
            return c.expert_boundaries
        lo, hi = self._sigma_span()
        return log_spaced_boundaries(lo, hi, c.experts)

    def _sigma_span(self) -> tuple[float, float]:
        """The sampling range of noise levels (inside what the network is trained on)."""
        c = self.config
        return max(c.sigma_min, self.precond.sigma_min), min(c.sigma_max, self.precond.sigma_max)

    def _expert_bounds(self) -> list[float]:
        """The boundaries as values of the network's noise input (c_noise, which rises
        with sigma under all three preconditionings), where ``ExpertNets`` routes."""
        sigma = torch.tensor(self.expert_boundaries(), dtype=torch.float64)
        return (self.precond.coefficients(sigma).c_noise * self.config.c_noise_scale).tolist()

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def import_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state of an official EDM checkpoint (NVlabs/edm ``network-snapshot-*.pkl``,
        its EMA network; ``genbench.generators.edm_checkpoint``), read as tensors only."""
        if self.config.experts > 1:
            raise ValueError("an EDM network pickle holds one network; import it with experts = 1")
        if not is_edm_state(state):
            raise ValueError(
                "neither a genbench safetensors checkpoint nor an EDM network pickle (no "
                "ema.model.map_layer0.weight in it)"
            )
        mult = tuple(self.config.channel_mult)
        converted = import_edm_state(self.net, state, self.image_size, mult)
        return {f"net.{key}": value for key, value in converted.items()}

    # ---------------------------------------------------------------- denoiser

    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        labels: torch.Tensor | None,
        net: nn.Module | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """D(x; sigma, label) = c_skip x + c_out F(c_in x; c_noise, label) (eq. 7), through
        ``net`` (default: the generator's own network); ``augment_labels`` describe the
        training augmentation (None: none, as in sampling)."""
        c = self.precond.coefficients(sigma)
        out = (self.net if net is None else net)(
            _per_row(c.c_in, x) * x,
            c.c_noise * self.config.c_noise_scale,
            labels if self.conditional else None,
            augment_labels,
        )
        return _per_row(c.c_skip, x) * x + _per_row(c.c_out, x) * out

    def _fixed_labels(self, labels: torch.Tensor | None) -> Denoiser:
        """The denoiser at a scalar sigma with fixed labels (the sampler's view)."""

        def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
            s = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
            return self.denoise(x, s, labels)

        return D

    def _sampling_denoiser(
        self, n: int, labels: torch.Tensor | None, guidance: float | None
    ) -> Denoiser:
        """D for ``n`` images: null labels without labels, guided when the scale ``guidance``
        is not 1 (``genbench.generators.guidance``)."""
        null = torch.full((n,), self.null_label, device=self.device, dtype=torch.long)
        if not self.conditional or labels is None:
            return self._fixed_labels(null)
        labels = labels.to(self.device)
        if not is_guided(guidance, self.conditional):
            return self._fixed_labels(labels)
        both = self._fixed_labels(torch.cat([labels, null]))
        scale = float(guidance)  # type: ignore[arg-type]  # is_guided: not None

        def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
            # One batched network call for the conditional and the null halves.
            cond, uncond = both(torch.cat([x, x]), sigma).chunk(2)
            return guide(cond, uncond, scale)

        return D

    # ---------------------------------------------------------------- training

    def _train_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if labels is None:
            return net_labels(None, n, self.null_label, self.device)
        labels = net_labels(labels, n, self.null_label, self.device)
        return drop_labels(labels, self.config.label_dropout, self.null_label)

    def training(self) -> Training:
        """Adam with EMA's linear warm-up over ``lr_rampup_kimg`` thousand images (counting
        the current batch; EDM counts it after the step, so its very first update is a
        no-op at lr 0); one phase: the denoising loss of eq. 8."""
        c = self.config
        adam = functools.partial(
            torch.optim.Adam, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.adam_eps
        )
        schedule = LRSchedule(warmup_images=c.lr_rampup_kimg * 1000)
        return Training(
            optimizers={"net": OptimizerSpec(("net",), adam, c.lr, schedule)},
            phases=[Phase("main", "net", self.draw, self.loss)],
        )

    def draw(self, batch: Batch) -> TrainingDraws:
        """Augmentation, label dropout, noise levels and noise for the whole batch (global
        torch RNG, seeded by the harness)."""
        y = batch.images.to(self.device)
        augment_labels = None
        if self.config.augment > 0:
            y, augment_labels = augment(y, self.config.augment)
        labels = self._train_labels(batch.labels, y.shape[0])
        sigma = self.precond.sample_sigma(y.shape[0], self.device)
        return TrainingDraws(y, labels, sigma, torch.randn_like(y), augment_labels)

    def loss(self, nets: Nets, d: TrainingDraws) -> Loss:
        """Eq. 8 per image through the network ``nets["net"]``."""
        D = functools.partial(
            self.denoise, labels=d.labels, net=nets["net"], augment_labels=d.augment_labels
        )
        value = loss_per_sample(D, self.precond, d.images, d.sigma, d.noise)
        return Loss(value, {"loss": value.detach()})

    # ---------------------------------------------------------------- sampling

    def _settings(self, settings: GuidedSettings | None) -> ClassifierGuidedSettings:
        if settings is None:
            return ClassifierGuidedSettings()
        if not isinstance(settings, ClassifierGuidedSettings):
            return ClassifierGuidedSettings(**settings.given())
        return settings

    def _steps(self, settings: GuidedSettings) -> int:
        return self.config.steps if settings.steps is None else settings.steps

    def sigmas(self, steps: int) -> torch.Tensor:
        """The sampling noise levels, kept inside the range the network was trained on."""
        lo, hi = self._sigma_span()
        return sigma_steps(steps, lo, hi, self.config.rho)

    def _churn(self) -> Churn:
        c = self.config
        s_tmax = math.inf if c.s_tmax is None else c.s_tmax
        return Churn(c.s_churn, c.s_tmin, s_tmax, c.s_noise)

    def _sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None,
        settings: GuidedSettings | None,
        watch: Watch | None = None,
    ) -> torch.Tensor:
        """``sample``; ``watch(sigma, D(x; sigma))`` sees every denoiser call."""
        settings = self._settings(settings)
        shape = (self.data.channels, self.image_size, self.image_size)
        # Stream 0: initial noise; stream 1 + i: the churn noise of step i.
        noise = seeded_randn(seeds, shape, self.device, stream=0)
        D = self._sampling_denoiser(len(seeds), labels, settings.guidance)
        if classifier_guided(settings.classifier_scale, labels):
            scale = float(settings.classifier_scale)  # type: ignore[arg-type]  # guided: set
            D = _classifier_guided(D, self.guidance_classifier(), labels, scale)
        if watch is not None:
            D = _watched(D, watch)
        sigmas = self.sigmas(self._steps(settings)).tolist()
        order = ORDERS[self.config.sampler]
        with eval_mode(self.net):  # no dropout: an image depends only on its seed
            if self.config.s_churn > 0:

                def step_noise(i: int) -> torch.Tensor:
                    return seeded_randn(seeds, shape, self.device, stream=1 + i)

                x = sample_sde(D, noise, sigmas, self._churn(), step_noise, order)
            else:
                x = sample_ode(D, noise, sigmas, order)
        return x.clamp_(-1.0, 1.0)

    def nfe(self, settings: GuidedSettings | None = None) -> int:
        settings = self._settings(settings)
        per_call = 2 if is_guided(settings.guidance, self.conditional) else 1
        return per_call * sampler_nfe(self._steps(settings), ORDERS[self.config.sampler])
