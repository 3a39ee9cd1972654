"""The VDPM generator: its config, its training draws and the class the registry holds
(see ``genbench.generators.vdpm`` for the maths)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from genbench.core.noise import seeded_randn
from genbench.generators.base import (
    GENERATORS,
    Batch,
    DataShape,
    GeneratorConfig,
    SteppedGenerator,
    Watch,
    eval_mode,
    random_hflip,
)
from genbench.generators.guidance import (
    GUIDANCE_HELP,
    GuidedSettings,
    check_guidance,
    drop_labels,
    guide,
    is_guided,
    net_labels,
)
from genbench.generators.training import Loss, LRSchedule, Nets, OptimizerSpec, Phase, Training
from genbench.generators.unet import build_unet, unet_apply, zero_output_layers
from genbench.generators.vdpm.conversions import (
    OUTPUT_CHANNELS,
    OUTPUT_TO_X0_EPS,
    diffuse,
    eps_from_x0,
    v_from_x0_eps,
)
from genbench.generators.vdpm.losses import (
    MSE_WEIGHTS,
    kl_weight_continuous,
    kl_weight_discrete,
    weighted_v_loss,
)
from genbench.generators.vdpm.samplers import (
    VARIANCE_FRACTIONS,
    Denoiser,
    Step,
    ancestral_step,
    ddim_step,
    sample_loop,
)
from genbench.generators.vdpm.schedules import logsnr_schedule

Tensor = torch.Tensor


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
    attn_after_resample: bool = Field(
        True, description="self-attention after the resampling blocks of attention levels"
    )
    zero_init: bool = Field(
        True, description="start blocks' and attention's output layers and the last conv at 0"
    )
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
    guidance: float = Field(1.0, ge=0, description=GUIDANCE_HELP + "; used when the spec sets none")
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


class VDPMSettings(GuidedSettings):
    """DDIM or ancestral steps N (default: the config's ``sample_steps``) and the guidance
    scale (default: the config's ``guidance``)."""

    steps: int | None = Field(None, ge=1, lt=65_536, description="N; None = sample_steps")


SAMPLERS: dict[str, Callable[[VDPMConfig], Step]] = {
    "ddim": lambda c: ddim_step,
    "ancestral": lambda c: partial(
        ancestral_step, intp_frac=VARIANCE_FRACTIONS[c.model_var_type](c.intp_frac)
    ),
}
"""The step function of each ``sampler``, built from the config."""


@GENERATORS.register("vdpm")
class VDPM(SteppedGenerator):
    """Continuous-time diffusion with a v-predicting UNet (see the module docstring)."""

    Config = VDPMConfig
    Settings = VDPMSettings

    @classmethod
    def is_conditional(cls, config: VDPMConfig, data: DataShape) -> bool:
        return config.class_conditional and data.num_classes > 0

    @classmethod
    def check_settings(cls, config: VDPMConfig, data: DataShape, settings: VDPMSettings) -> None:
        scale = config.guidance if settings.guidance is None else settings.guidance
        check_guidance(scale, cls.is_conditional(config, data))

    def __init__(self, config: VDPMConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.null_label = data.num_classes  # the extra "no label" class of guidance
        self.schedule = logsnr_schedule(
            config.logsnr_schedule, config.logsnr_min, config.logsnr_max
        )
        self.net = self._build_net().to(self.device)

    def _build_net(self) -> nn.Module:
        c = self.config
        net = build_unet(
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
            attn_after_resample=c.attn_after_resample and c.resblock_resample,
            norm_eps=1e-6,  # v-diffusion-torch's GroupNorm epsilon
        )
        # v-diffusion-torch's init_scale = 0: residual blocks, attention and the output start
        # at zero, so each block starts as the identity.
        return zero_output_layers(net) if c.zero_init else net

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    # ----------------------------------------------------------------- network

    def _net_labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        if not self.conditional:
            return None
        return net_labels(labels, n, self.null_label, self.device)

    def _net_output(
        self, z: Tensor, logsnr: Tensor, labels: Tensor | None, net: nn.Module | None = None
    ) -> Tensor:
        """The raw network output at log-SNR ``logsnr`` (one value or one per sample)."""
        # The net sees the cosine-schedule time of lambda (Salimans & Ho's "inv_cos" input),
        # x 1000 so diffusers' sinusoidal embedding spans DDPM's integer-step range.
        t_in = torch.atan(torch.exp(-0.5 * logsnr.to(torch.float64))) * (2000.0 / math.pi)
        return unet_apply(self.net if net is None else net, z, t_in.to(z.device, z.dtype), labels)

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

    def losses(self, draws: TrainingDraws, net: nn.Module | None = None) -> Tensor:
        """Per-sample loss of one (micro-)batch (module docstring, "Losses"), through
        ``net`` (default: the generator's network)."""
        x0 = draws.x0
        logsnr = self.schedule(draws.t)
        z = diffuse(x0, draws.eps, logsnr)
        out = self._net_output(z, logsnr, draws.labels, net)
        x_pred, eps_pred = OUTPUT_TO_X0_EPS[self.config.model_out_type](z, out, logsnr)
        v_pred = v_from_x0_eps(x_pred, eps_pred, logsnr)
        v = v_from_x0_eps(x0, draws.eps, logsnr)
        return weighted_v_loss(v_pred, v, self._x_weight(draws.t, logsnr), logsnr)

    def loss(self, nets: Nets, draws: TrainingDraws) -> Loss:
        value = self.losses(draws, nets["net"])
        return Loss(value, {"loss": value.detach()})

    def training(self) -> Training:
        """AdamW with a linear warm-up over ``warmup_steps`` and gradient clipping at
        ``grad_clip`` (v-diffusion-torch / ddpm_w_distillation); one phase: the weighted
        v-loss."""
        c = self.config
        adamw = functools.partial(
            torch.optim.AdamW, lr=c.lr, betas=(c.beta1, c.beta2), weight_decay=c.weight_decay
        )
        schedule = LRSchedule(warmup_steps=c.warmup_steps)
        return Training(
            optimizers={"net": OptimizerSpec(("net",), adamw, c.lr, schedule, c.grad_clip)},
            phases=[Phase("main", "net", self.draw, self.loss)],
        )

    # ----------------------------------------------------------------- sampling

    def _settings(self, settings: VDPMSettings | None) -> tuple[int, float]:
        """(steps N, guidance scale s) with the config's defaults filled in."""
        settings = settings if settings is not None else VDPMSettings()
        steps = self.config.sample_steps if settings.steps is None else settings.steps
        scale = self.config.guidance if settings.guidance is None else settings.guidance
        check_guidance(scale, self.conditional)
        return steps, scale

    def _denoiser(self, labels: Tensor | None, scale: float) -> Denoiser:
        """(z, logsnr) -> (x_pred, eps_pred), guided at ``scale`` when there are labels to
        guide towards, x_pred clipped if asked."""
        convert = OUTPUT_TO_X0_EPS[self.config.model_out_type]
        guided = labels is not None and is_guided(scale, self.conditional)

        def denoise(z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
            cond = self._net_labels(labels, z.shape[0])
            if not guided:
                return x0_eps(z, self._net_output(z, logsnr, cond), logsnr)
            null = torch.full_like(cond, self.null_label)
            out = self._net_output(torch.cat([z, z]), logsnr, torch.cat([cond, null]))
            (x0_c, _), (x0_u, _) = (x0_eps(z, o, logsnr) for o in out.chunk(2))
            # v-diffusion-torch mixes the (clipped) x0 of each branch and does not clip the
            # mix again; eps follows from it.
            x0 = guide(x0_c, x0_u, scale)
            return x0, eps_from_x0(z, x0, logsnr)

        def x0_eps(z: Tensor, out: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
            """One branch's (x_pred, eps_pred), x_pred clipped if asked."""
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

    def _sample(
        self,
        seeds: Sequence[int],
        labels: Tensor | None,
        settings: VDPMSettings | None,
        watch: Watch | None = None,
    ) -> Tensor:
        """``sample``; ``watch(sigma, x_pred)`` sees every denoiser call, with sigma =
        exp(-logsnr / 2), the noise level of z_t / alpha_t."""
        n_steps, scale = self._settings(settings)
        shape = (self.data.channels, self.image_size, self.image_size)
        z = seeded_randn(seeds, shape, self.device, stream=0)  # z_1 ~ N(0, I)

        def noise(i: int) -> Tensor:  # stream 1 + i: step i's noise, by seed
            return seeded_randn(seeds, shape, self.device, stream=1 + i)

        with eval_mode(self.net):  # no dropout: an image depends only on its seed
            denoise = self._denoiser(labels, scale)
            if watch is not None:
                denoise = _watched(denoise, watch)
            x = sample_loop(denoise, z, self.logsnr_grid(n_steps), self._step_fn(), noise)
        return x.clamp_(-1.0, 1.0)

    def nfe(self, settings: VDPMSettings | None = None) -> int:
        """Network evaluations per image: N, doubled under classifier-free guidance."""
        steps, scale = self._settings(settings)
        return steps * (2 if is_guided(scale, self.conditional) else 1)


def _watched(denoise: Denoiser, watch: Watch) -> Denoiser:
    """``denoise`` that also shows each call's (sigma, x_pred) to ``watch``."""

    def watched(z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        x0, eps = denoise(z, logsnr)
        watch(math.exp(-0.5 * float(logsnr)), x0.clone())
        return x0, eps

    return watched
