"""DDPM (Ho et al. 2020) with the improvements of Nichol & Dhariwal 2021 (iDDPM).

An epsilon-predicting (or v- or x_0-predicting) ``diffusers.UNet2DModel`` on a linear,
cosine or scaled-linear beta schedule, with a
fixed-small, fixed-large or learned-range variance (the network then outputs twice the image
channels), trained with L_simple, L_vlb or the hybrid L_simple + lambda L_vlb, timesteps
drawn uniformly or by loss-aware importance sampling. Sampling: ancestral on the full chain
or any respaced subset of timesteps, or DDIM (Song et al. 2020) with configurable eta.
Class-conditional models use classifier-free guidance (Ho & Salimans 2021).

Defaults are Ho et al.'s CIFAR-10 model (T = 1000, linear, fixed-large, L_simple, 35.7M
parameters); ``benchmarks/specs/cifar10.toml`` holds the iDDPM CIFAR-10 setting. A
diffusers directory (``UNet2DModel.save_pretrained``, the format of the published
``google/ddpm-cifar10-32``) loads with ``pretrained = "DIR"`` or ``DDPM.from_pretrained``;
a pipeline folder's scheduler config sets the process it was trained with
(``genbench.generators.diffusers_pipeline``).
Those published weights are reported to be the non-EMA checkpoint (FID about 12), not the
paper's FID 3.17 model. Checkpoints of OpenAI's improved-diffusion and guided-diffusion
load through ``import_state`` (``genbench.generators.openai_checkpoint``) when the config
holds the flags that made them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from diffusers import UNet2DModel
from pydantic import Field, field_validator, model_validator
from torch import nn

from genbench.core.errors import CheckpointError
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
from genbench.generators.diffusers_pipeline import (
    config_from_scheduler,
    local_folder,
    read_scheduler,
    scheduler_file,
)
from genbench.generators.diffusion import (
    RANGED_SCHEDULES,
    STEPS_GRAMMAR,
    TIMESTEP_SAMPLERS,
    GaussianDiffusion,
    SamplingPlan,
    mean_flat,
    parse_steps,
)
from genbench.generators.experts import ExpertNets, check_boundaries, log_spaced_boundaries
from genbench.generators.guidance import (
    ClassifierGuidedSettings,
    check_classifier_scale,
    check_guidance,
    classifier_guided,
    drop_labels,
    guide,
    is_guided,
    net_labels,
)
from genbench.generators.openai_checkpoint import (
    OPENAI_MARKERS,
    import_openai_state,
    is_openai_state,
)
from genbench.generators.training import Loss, LRSchedule, Nets, OptimizerSpec, Phase, Training
from genbench.generators.unet import build_unet, unet_apply, zero_output_layers

#: Backbone fields that a ``pretrained`` directory supplies instead.
BACKBONE_FIELDS = (
    "channels",
    "channel_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "norm_groups",
    "attention_head_dim",
    "num_heads",
    "scale_shift_norm",
    "resblock_updown",
    "time_embedding",
)

#: The keys of a diffusers UNet's config.json that a dry run shows.
PRETRAINED_SHOWN = (
    "sample_size",
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "attention_head_dim",
    "norm_num_groups",
    "time_embedding_type",
    "num_class_embeds",
)

#: The process a pipeline's scheduler config sets (``diffusers_pipeline``).
PROCESS_FIELDS = (
    "num_timesteps",
    "schedule",
    "beta_start",
    "beta_end",
    "prediction",
    "variance",
    "clip_denoised",
    "rescale_timesteps",
)

#: The sinusoidal timestep embeddings, as ``build_unet``'s (flip_sin_to_cos, freq_shift):
#: Ho et al.'s (sines first, frequencies 10000^(-i / (d/2 - 1))) and OpenAI's (cosines
#: first, 10000^(-i / (d/2))), which improved- and guided-diffusion checkpoints need.
TIME_EMBEDDINGS = {"ho": (False, 1), "openai": (True, 0)}


def _diffusers_dir(path: Path) -> Path | None:
    """The folder holding the UNet's config.json: ``path`` itself or its ``unet/``."""
    for candidate in (path, path / "unet"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


class DDPMConfig(GeneratorConfig):
    """DDPM hyper-parameters; defaults are Ho et al. 2020's CIFAR-10 setting."""

    FROM_PRETRAINED: ClassVar[frozenset[str]] = frozenset(
        {*BACKBONE_FIELDS, *PROCESS_FIELDS, "image_size", "loss"}
    )
    """What a diffusers folder given as ``--checkpoint ddpm=DIR`` supplies: a spec entry's
    values of these are dropped for it (the folder's network and process replace them)."""

    image_size: int | None = Field(None, ge=4, description="resolution; None = the data's")
    pretrained: Path | None = Field(
        None, description="diffusers UNet2DModel directory to start from (backbone from it)"
    )
    # diffusion
    num_timesteps: int = Field(1000, ge=2, le=65_535, description="T")
    schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"
    beta_start: float | None = Field(
        None, gt=0, lt=1, description="first beta of a linear schedule; None: 1e-4 x 1000 / T"
    )
    beta_end: float | None = Field(
        None, gt=0, lt=1, description="last beta of a linear schedule; None: 0.02 x 1000 / T"
    )
    prediction: Literal["epsilon", "v", "x0"] = Field(
        "epsilon", description="what the network predicts: eps (Ho et al.), v or x_0"
    )
    variance: Literal["fixed_small", "fixed_large", "learned_range"] = "fixed_large"
    loss: Literal["simple", "vlb", "hybrid"] = "simple"
    hybrid_lambda: float = Field(0.001, ge=0, description="lambda of L_simple + lambda L_vlb")
    timestep_sampler: Literal["uniform", "loss_aware"] = "uniform"
    # class conditioning (classifier-free guidance)
    conditional: bool = Field(False, description="use class labels (when the data has them)")
    p_uncond: float = Field(0.1, ge=0, le=1, description="label dropout rate in training")
    # backbone (Ho et al. appendix B)
    channels: int = Field(128, ge=1)
    channel_mult: tuple[int, ...] = Field((1, 2, 2, 2), min_length=1)
    num_res_blocks: int = Field(2, ge=1)
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = Field(0.1, ge=0, lt=1)
    norm_groups: int = Field(32, ge=1)
    attention_head_dim: int | None = Field(
        None, ge=1, description="channels per attention head (num_head_channels); None = one head"
    )
    num_heads: int | None = Field(
        None, ge=1, description="heads of every attention block instead (OpenAI's num_heads)"
    )
    scale_shift_norm: bool = False
    resblock_updown: bool = Field(False, description="resample with residual blocks (BigGAN)")
    time_embedding: Literal["ho", "openai"] = Field(
        "ho", description="sinusoidal timestep embedding: Ho et al.'s or OpenAI's"
    )
    rescale_timesteps: bool = Field(
        True, description="the network sees t x 1000 / T (improved-diffusion); false: t"
    )
    null_label: bool = Field(
        True, description="an extra 'no label' class for guidance (OpenAI's models: false)"
    )
    attention_order: Literal["legacy", "new"] = Field(
        "legacy", description="q/k/v packing of an OpenAI checkpoint (use_new_attention_order)"
    )
    likelihood_cdf: Literal["exact", "tanh"] = Field(
        "exact", description="normal CDF of the decoder likelihood: exact or OpenAI's tanh"
    )
    # optimisation
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(5000, ge=0, description="linear learning-rate warm-up")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 = no clipping")
    hflip: bool = Field(True, description="random horizontal flips of training images")
    # default sampler
    sample_steps: int | str | None = Field(
        None, description="default sampler: N, 'ddimN' or 'a+b+c'; None = all T steps"
    )
    ddim_eta: float = Field(0.0, ge=0)
    clip_denoised: bool = Field(True, description="clip predicted x_0 to [-1, 1]")
    # ensemble of expert denoisers (eDiff-I)
    experts: int = Field(
        1, ge=1, le=16, description="K denoisers, each owning one interval of noise levels"
    )
    expert_boundaries: tuple[float, ...] | None = Field(
        None,
        description="the K - 1 ascending noise levels sigma = sqrt((1 - alpha-bar) / "
        "alpha-bar) where one expert hands over to the next (expert 0 owns the lowest); "
        "None = equal in log sigma over the schedule's range",
    )

    @field_validator("pretrained")
    @classmethod
    def _is_diffusers_dir(cls, path: Path | None) -> Path | None:
        if path is not None and _diffusers_dir(path) is None:
            raise ValueError(f"{path} is not a directory holding a diffusers config.json")
        return path

    @model_validator(mode="before")
    @classmethod
    def _pipeline_scheduler(cls, data: Any) -> Any:
        """A diffusers pipeline folder's scheduler sets the process it was trained with
        (``genbench.generators.diffusers_pipeline``); a field the user also set must agree."""
        if not isinstance(data, dict) or data.get("pretrained") is None:
            return data
        folder = local_folder(data["pretrained"])  # a Hub id: its cached snapshot
        data = {**data, "pretrained": folder}
        file = scheduler_file(folder)
        if file is None:
            return data
        fields = config_from_scheduler(read_scheduler(file), str(file))
        for key, value in fields.items():
            if key in data and data[key] != value:
                raise ValueError(
                    f"{key} = {data[key]!r} contradicts the pipeline's scheduler ({file}: "
                    f"{key} = {value!r}); drop it"
                )
        filled = {**data, **fields}
        if fields["variance"] == "learned_range" and "loss" not in data:
            filled["loss"] = "hybrid"  # the loss that trains a learned range (iDDPM)
        return filled

    @model_validator(mode="after")
    def _consistent(self) -> DDPMConfig:
        if (self.beta_start is None) != (self.beta_end is None):
            raise ValueError("give beta_start and beta_end together")
        if self.beta_start is not None:
            if self.schedule not in RANGED_SCHEDULES:
                raise ValueError(
                    f"beta_start / beta_end do not apply to schedule {self.schedule!r}"
                )
            if not self.beta_start < self.beta_end:  # type: ignore[operator]
                raise ValueError("beta_start must be below beta_end")
        if self.variance == "learned_range" and self.loss == "simple":
            raise ValueError("learned_range variance needs loss 'hybrid' or 'vlb' to train it")
        if any(self.channels * m % self.norm_groups for m in self.channel_mult):
            raise ValueError("channels x every channel_mult must be divisible by norm_groups")
        if self.num_heads is not None and self.attention_head_dim is not None:
            raise ValueError("give num_heads or attention_head_dim, not both")
        if not self.null_label and self.conditional and self.p_uncond > 0:
            raise ValueError(
                "null_label = false leaves no class to drop labels to; set p_uncond = 0"
            )
        if self.sample_steps is not None:  # raises ValueError when invalid
            parse_steps(self.sample_steps, self.num_timesteps)
        if self.expert_boundaries is not None:
            check_boundaries(self.expert_boundaries, self.experts)
        given = sorted(self.model_fields_set & set(BACKBONE_FIELDS))
        if self.pretrained is not None and given:
            raise ValueError(f"pretrained supplies the backbone; drop {', '.join(given)}")
        return self

    def view(self) -> dict[str, Any]:
        """With ``pretrained``, the backbone fields are the folder's, not these defaults:
        they are left out (``notes`` describes the folder's network)."""
        out = super().view()
        if self.pretrained is not None:
            out = {k: v for k, v in out.items() if k not in BACKBONE_FIELDS}
        return out

    def notes(self) -> list[str]:
        """The pretrained UNet's layout, from its config.json (without loading weights)."""
        if self.pretrained is None:
            return []
        folder = _diffusers_dir(self.pretrained)
        try:
            config = json.loads((folder / "config.json").read_text()) if folder else None
        except (OSError, ValueError) as exc:
            return [f"pretrained network {self.pretrained}: config.json unreadable ({exc})"]
        if not isinstance(config, dict):
            return [f"pretrained network {self.pretrained}: config.json holds no object"]
        shown = ", ".join(
            f"{key} = {json.dumps(config[key])}"
            for key in PRETRAINED_SHOWN
            if config.get(key) is not None
        )
        line = f"pretrained network {folder}: {config.get('_class_name', 'UNet2DModel')}"
        try:
            with torch.device("meta"):  # layout only: no memory, no weights read
                params = sum(p.numel() for p in UNet2DModel.from_config(config).parameters())
            line += f", {params / 1e6:.2f}M parameters"
        except Exception:  # a config diffusers cannot build: loading will say why
            pass
        return [line, f"  {shown}"] if shown else [line]


def load_pretrained_unet(path: Path) -> UNet2DModel:
    """A UNet2DModel from a local diffusers directory; any failure is a one-line error."""
    folder = _diffusers_dir(Path(path))
    if folder is None:
        raise CheckpointError(f"pretrained {path}: no diffusers config.json there")
    try:
        net = UNet2DModel.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # diffusers raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"pretrained {path}: not a loadable diffusers UNet2DModel ({first})"
        ) from None
    if not isinstance(net, UNet2DModel):
        raise CheckpointError(f"pretrained {path}: holds a {type(net).__name__}, not a UNet2DModel")
    return net


@dataclass(frozen=True)
class TrainingDraws:
    """Everything random in one training update, for the whole batch."""

    x0: torch.Tensor  # training images (flipped when hflip)
    labels: torch.Tensor | None  # after label dropout; None for an unconditional model
    t: torch.Tensor  # (N,) timestep indices
    weights: torch.Tensor  # (N,) importance weights of the timestep sampler
    noise: torch.Tensor  # epsilon of q(x_t | x_0)


class DDPMSettings(ClassifierGuidedSettings):
    """The sampler (default: the config's ``sample_steps``, else the full chain) and the
    classifier-free guidance scale (default: 1, the conditional model)."""

    steps: int | str | None = Field(None, description=STEPS_GRAMMAR)


@GENERATORS.register("ddpm")
class DDPM(SteppedGenerator):
    """Gaussian diffusion with an epsilon-predicting UNet (see the module docstring)."""

    Config = DDPMConfig
    Settings = DDPMSettings

    @classmethod
    def is_conditional(cls, config: DDPMConfig, data: DataShape) -> bool:
        return config.conditional and data.num_classes > 0

    @classmethod
    def check_settings(cls, config: DDPMConfig, data: DataShape, settings: DDPMSettings) -> None:
        if settings.steps is not None:
            parse_steps(settings.steps, config.num_timesteps)  # ValueError when invalid
        check_guidance(settings.guidance, cls.is_conditional(config, data))
        check_classifier_scale(settings.classifier_scale, data.num_classes)
        if not config.null_label and is_guided(settings.guidance, cls.is_conditional(config, data)):
            raise ValueError(
                f"guidance: {settings.guidance} needs the 'no label' class, which this model "
                "has not (null_label = false): sample it conditionally (guidance = 1)"
            )

    def __init__(self, config: DDPMConfig, data: DataShape, device: torch.device) -> None:
        super().__init__(config, data, device)
        self.null_label = data.num_classes  # the extra "no label" class of guidance
        self.out_channels = data.channels * (2 if config.variance == "learned_range" else 1)
        self.image_size = config.image_size or data.image_size
        self.unet = self._build_unet().to(self.device)
        self.diffusion = GaussianDiffusion.from_schedule(
            config.schedule, config.num_timesteps, config.beta_start, config.beta_end
        )
        self.timesteps = TIMESTEP_SAMPLERS[config.timestep_sampler](config.num_timesteps)
        if config.experts > 1:
            # From the same start, a pretrained UNet's weights when one is given.
            self.unet = ExpertNets(self.unet, config.experts, self._expert_bounds()).to(self.device)
        self._respaced: dict[tuple[int, ...], GaussianDiffusion] = {}

    @classmethod
    def from_pretrained(
        cls, path: str | Path, data: DataShape, device: torch.device, **config: Any
    ) -> DDPM:
        """A DDPM around a saved diffusers UNet; the defaults (epsilon, fixed-large, linear,
        T = 1000) are those of Ho et al. and ``google/ddpm-cifar10-32``."""
        return cls(cls.Config(pretrained=Path(path), **config), data, device)

    # ----------------------------------------------------------------- networks

    def _build_unet(self) -> UNet2DModel:
        c = self.config
        if c.pretrained is not None:
            return self._checked_pretrained(load_pretrained_unet(c.pretrained))
        flip_sin_to_cos, freq_shift = TIME_EMBEDDINGS[c.time_embedding]
        net = build_unet(
            image_size=self.image_size,
            in_channels=self.data.channels,
            out_channels=self.out_channels,
            channels=c.channels,
            channel_mult=c.channel_mult,
            num_res_blocks=c.num_res_blocks,
            attn_resolutions=c.attn_resolutions,
            dropout=c.dropout,
            num_class_embeds=self.data.num_classes + c.null_label if self.conditional else 0,
            norm_groups=c.norm_groups,
            attention_head_dim=c.attention_head_dim,
            num_heads=c.num_heads,
            scale_shift_norm=c.scale_shift_norm,
            resblock_resample=c.resblock_updown,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
        )
        # improved-diffusion starts the residual blocks' and attention's output layers and
        # the final convolution at zero (Nichol & Dhariwal 2021, their code's zero_module).
        return zero_output_layers(net)

    def _checked_pretrained(self, net: UNet2DModel) -> UNet2DModel:
        cfg, where = net.config, f"pretrained {self.config.pretrained}"
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        if self.config.image_size not in (None, size):
            raise CheckpointError(f"{where}: UNet is for {size} px, config asks {self.image_size}")
        self.image_size = size
        expected = (self.data.channels, self.out_channels)
        if (cfg.in_channels, cfg.out_channels) != expected:
            raise CheckpointError(
                f"{where}: UNet maps {cfg.in_channels} -> {cfg.out_channels} channels; this "
                f"data set and variance {self.config.variance!r} need {expected[0]} -> "
                f"{expected[1]}"
            )
        if bool(cfg.num_class_embeds) != self.conditional:
            raise CheckpointError(f"{where}: conditional = {self.conditional} does not fit it")
        return net

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def _sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t) of every original timestep (rising)."""
        abar = self.diffusion.alphas_cumprod
        return ((1 - abar) / abar).sqrt()

    def expert_boundaries(self) -> tuple[float, ...]:
        """The noise levels sigma where one expert hands over to the next (none for K = 1)."""
        c = self.config
        if c.expert_boundaries is not None:
            return c.expert_boundaries
        sigmas = self._sigmas()
        return log_spaced_boundaries(float(sigmas[0]), float(sigmas[-1]), c.experts)

    def _expert_bounds(self) -> list[float]:
        """The boundaries in the network's time input, where ``ExpertNets`` routes: halfway
        between the last timestep below a boundary sigma and the first at or above it, times
        the rescaling the network sees (``_model``)."""
        sigmas = self._sigmas()
        scale = 1000.0 / self.config.num_timesteps if self.config.rescale_timesteps else 1.0
        bounds = torch.tensor(self.expert_boundaries(), dtype=sigmas.dtype)
        return ((torch.searchsorted(sigmas, bounds).double() - 0.5) * scale).tolist()

    def import_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state of an improved-diffusion / guided-diffusion ``UNetModel`` checkpoint
        (``model*.pt``, ``ema_*.pt``, their published models), mapped onto this UNet; the
        config must hold the flags that made it (docs/generators.md has the table)."""
        if self.config.experts > 1:
            raise ValueError("an OpenAI checkpoint holds one UNet; import it with experts = 1")
        if not is_openai_state(state):
            raise ValueError(
                "neither a genbench safetensors checkpoint nor an improved-/guided-diffusion "
                f"UNet state dict (it has no {' or '.join(OPENAI_MARKERS)})"
            )
        if self.config.time_embedding != "openai":
            raise ValueError(
                'an improved-/guided-diffusion checkpoint needs time_embedding = "openai" '
                "in the ddpm config (their timestep embedding)"
            )
        converted = import_openai_state(
            self.unet, state, self.config.num_res_blocks, self.config.attention_order
        )
        return {f"unet.{key}": value for key, value in converted.items()}

    def _net_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if labels is None and not self.config.null_label:
            raise ValueError("this model has no 'no label' class (null_label = false): give labels")
        return net_labels(labels, n, self.null_label, self.device)

    def _outputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        diffusion: GaussianDiffusion,
        labels: Any,
        net: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's prediction (eps, v or x_0: ``config.prediction``) and learned-range
        v for step indices ``t`` of ``diffusion``."""
        # Original timesteps scaled to [0, 1000) whatever T is (improved-diffusion's
        # rescale_timesteps), so the time embedding sees the DDPM range.
        scale = 1000.0 / self.config.num_timesteps if self.config.rescale_timesteps else 1.0
        t_net = diffusion.table(diffusion.timestep_map, x.device)[t].float() * scale
        out = unet_apply(self.unet if net is None else net, x, t_net, labels)
        if self.config.variance != "learned_range":
            return out, None
        pred, raw = out.chunk(2, dim=1)
        return pred, (raw + 1.0) / 2.0  # network output in [-1, 1] -> v in [0, 1]

    def _apply(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        diffusion: GaussianDiffusion,
        labels: Any,
        net: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """eps and (learned-range) v for step indices ``t`` of ``diffusion``, through
        ``net`` (default: the generator's UNet): the network's prediction as eps."""
        pred, v = self._outputs(x, t, diffusion, labels, net)
        return self.eps_of(pred, x, t, diffusion), v

    def eps_of(
        self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor, diffusion: GaussianDiffusion
    ) -> torch.Tensor:
        """The network's prediction (``config.prediction``) at x_t as eps; the samplers,
        guidance and the VLB work in eps."""
        if self.config.prediction == "v":
            return diffusion.eps_from_v(x, t, pred)
        if self.config.prediction == "x0":
            return diffusion.eps_from_x0(x, t, pred)
        return pred

    # ----------------------------------------------------------------- training

    def training(self) -> Training:
        """Adam with a linear warm-up over ``warmup_steps`` and gradient clipping at
        ``grad_clip`` (Ho et al. appendix B; improved-diffusion's CIFAR-10 flags use
        neither); one phase: the configured loss on importance-weighted timesteps."""
        c = self.config
        adam = functools.partial(torch.optim.Adam, lr=c.lr)
        schedule = LRSchedule(warmup_steps=c.warmup_steps)
        return Training(
            optimizers={"unet": OptimizerSpec(("unet",), adam, c.lr, schedule, c.grad_clip)},
            phases=[Phase("main", "unet", self.draw, self.loss, observe=self._observe)],
        )

    def draw(self, batch: Batch) -> TrainingDraws:
        """Flips, label dropout, timesteps (with importance weights) and noise for the
        whole batch, from the global torch RNG (seeded by the harness)."""
        x0 = batch.images.to(self.device)
        n = x0.shape[0]
        if self.config.hflip:
            x0 = random_hflip(x0)
        labels = self._net_labels(batch.labels, n)
        if labels is not None:
            labels = drop_labels(labels, self.config.p_uncond, self.null_label)
        t, weights = self.timesteps.sample(n, self.device)
        return TrainingDraws(x0, labels, t, weights, torch.randn_like(x0))

    def losses(self, d: TrainingDraws, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Per-image losses of (a micro-batch of) draws: ``total`` (the objective before
        importance weighting) and its parts ``mse`` (L_simple) and ``vlb`` (L_t in
        bits/dim) where used."""
        c, diff = self.config, self.diffusion
        xt = diff.q_sample(d.x0, d.t, d.noise)
        pred, v = self._outputs(xt, d.t, diff, d.labels, net)
        eps = self.eps_of(pred, xt, d.t, diff)
        terms: dict[str, torch.Tensor] = {}
        if c.loss in ("simple", "hybrid"):
            # Ho et al. eq. 14 for eps; the same MSE on v (Salimans & Ho) or x_0 otherwise.
            target = {"epsilon": d.noise, "x0": d.x0}.get(c.prediction)
            if target is None:
                target = diff.v_target(d.x0, d.t, d.noise)
            terms["mse"] = mean_flat((target - pred) ** 2)
        if c.loss in ("vlb", "hybrid"):
            # iDDPM section 3.1: in the hybrid loss L_vlb trains only the variance
            # (stop-gradient on the mean); T · L_t is an unbiased estimate of L_vlb.
            mean_eps = eps.detach() if c.loss == "hybrid" else eps
            pred = diff.p_mean_variance(mean_eps, xt, d.t, c.variance, v, clip=False)
            terms["vlb"] = diff.vlb_terms(d.x0, xt, d.t, pred, c.likelihood_cdf)
        scale = {"simple": 0.0, "vlb": 1.0, "hybrid": c.hybrid_lambda}[c.loss]
        total = terms.get("mse", 0.0) + scale * diff.num_timesteps * terms.get("vlb", 0.0)
        return {"total": total, **terms}

    def loss(self, nets: Nets, d: TrainingDraws) -> Loss:
        terms = self.losses(d, nets["unet"])
        value = terms["total"] * d.weights
        logs = {
            "loss": value.detach(),
            **{k: terms[k].detach() for k in ("mse", "vlb") if k in terms},
        }
        return Loss(value, logs, observed=terms["total"].detach())

    def _observe(self, d: TrainingDraws, total: torch.Tensor) -> None:
        self.timesteps.update(d.t, total)  # the loss-aware sampler learns E[L_t^2]

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"timesteps.{k}": v for k, v in self.timesteps.state_dict().items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.timesteps.load_state_dict({k.removeprefix("timesteps."): v for k, v in state.items()})

    # ----------------------------------------------------------------- sampling

    def _settings(self, settings: DDPMSettings | None) -> DDPMSettings:
        settings = settings if settings is not None else DDPMSettings()
        type(self).check_settings(self.config, self.data, settings)
        return settings

    def _plan(self, steps: int | str | None) -> SamplingPlan:
        steps = self.config.sample_steps if steps is None else steps
        T = self.config.num_timesteps
        return parse_steps(T if steps is None else steps, T)

    def _process(self, plan: SamplingPlan) -> GaussianDiffusion:
        if len(plan.timesteps) == self.config.num_timesteps:
            return self.diffusion
        if plan.timesteps not in self._respaced:
            self._respaced[plan.timesteps] = self.diffusion.respaced(plan.timesteps)
        return self._respaced[plan.timesteps]

    def _predict(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        diffusion: GaussianDiffusion,
        labels: torch.Tensor | None,
        guidance: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """eps and v at step indices ``t``, eps guided at scale ``guidance`` (a conditional
        model with labels; ``genbench.generators.guidance``)."""
        if labels is None or not is_guided(guidance, self.conditional):
            return self._apply(x, t, diffusion, self._net_labels(labels, x.shape[0]))
        null = torch.full_like(labels, self.null_label)
        both = torch.cat([labels.to(self.device, torch.long), null.to(self.device)])
        eps, v = self._apply(torch.cat([x, x]), torch.cat([t, t]), diffusion, both)
        eps = guide(*eps.chunk(2), float(guidance))  # type: ignore[arg-type]  # is_guided
        # the variance (if learned) comes from the conditional output
        return eps, None if v is None else v.chunk(2)[0]

    def _update(
        self,
        plan: SamplingPlan,
        d: GaussianDiffusion,
        x: torch.Tensor,
        t: torch.Tensor,
        out: tuple[torch.Tensor, torch.Tensor | None],
        noise: torch.Tensor | None,
        grad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t-1} from x_t and the network's (eps, v): a DDIM or an ancestral step;
        ``grad``: classifier guidance's s grad log p(y | x_t) (Dhariwal & Nichol)."""
        (eps, v), c = out, self.config
        if plan.kind == "ddim":
            eps = self._guided_eps(d, x, t, eps, grad)
            return d.ddim_step(eps, x, t, c.ddim_eta, noise, c.clip_denoised)
        pred = d.p_mean_variance(eps, x, t, c.variance, v, c.clip_denoised)
        if grad is not None:  # their algorithm 1: the mean moves by Sigma s g
            pred = dataclasses.replace(pred, mean=pred.mean + pred.log_variance.exp() * grad)
        return d.ancestral_step(pred, t, noise)

    @staticmethod
    def _guided_eps(
        d: GaussianDiffusion,
        x: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        grad: torch.Tensor | None,
    ) -> torch.Tensor:
        """Dhariwal & Nichol's algorithm 2, eps - sqrt(1 - alpha-bar_t) s g (``grad`` =
        s g; None: ``eps``). Its x0 is Tweedie's estimate under the guided score, so the
        trajectory shows it for the ancestral sampler too."""
        if grad is None:
            return eps
        return eps - d.sqrt_one_minus_alphas_cumprod.to(x)[t].view(-1, 1, 1, 1) * grad

    def _needs_noise(self, plan: SamplingPlan, index: int) -> bool:
        if index == 0:
            return False  # the last step adds no noise (Ho et al. algorithm 2, line 3)
        return plan.kind == "ancestral" or self.config.ddim_eta > 0

    def _sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None,
        settings: DDPMSettings | None,
        watch: Watch | None = None,
    ) -> torch.Tensor:
        """``sample``; ``watch(sigma_t, predicted x0)`` sees every step, with sigma_t =
        sqrt((1 - alpha-bar_t) / alpha-bar_t), the noise level of x_t / sqrt(alpha-bar_t)."""
        settings = self._settings(settings)
        plan = self._plan(settings.steps)
        guidance = settings.guidance
        d = self._process(plan)
        shape = (self.data.channels, self.image_size, self.image_size)
        x = seeded_randn(seeds, shape, self.device, stream=0)  # x_T
        with eval_mode(self.unet):
            for i, index in enumerate(reversed(range(d.num_timesteps))):
                t = torch.full((len(seeds),), index, device=self.device, dtype=torch.long)
                out = self._predict(x, t, d, labels, guidance)
                grad = None
                if classifier_guided(settings.classifier_scale, labels):
                    sigma_t = float(d.sqrt_recipm1_alphas_cumprod[index])  # x_t is x_vp there
                    grad = self.guidance_classifier().grad_log_prob(x, sigma_t, labels)
                    grad = grad * float(settings.classifier_scale)  # type: ignore[arg-type]
                if watch is not None:  # with guidance: the x0 of the guided score
                    x0 = d.x0_from_eps(x, t, self._guided_eps(d, x, t, out[0], grad))
                    x0 = x0.clamp(-1.0, 1.0) if self.config.clip_denoised else x0
                    watch(float(d.sqrt_recipm1_alphas_cumprod[index]), x0)
                noise = None
                if self._needs_noise(plan, index):  # stream 1 + i: step i's noise, by seed
                    noise = seeded_randn(seeds, shape, self.device, stream=1 + i)
                x = self._update(plan, d, x, t, out, noise, grad)
        return x.clamp_(-1.0, 1.0)

    def nfe(self, settings: DDPMSettings | None = None) -> int:
        """Network evaluations per image; classifier-free guidance doubles them."""
        settings = self._settings(settings)
        count = len(self._plan(settings.steps).timesteps)
        return count * (2 if is_guided(settings.guidance, self.conditional) else 1)

    # ----------------------------------------------------------------- likelihood

    @torch.no_grad()
    def bits_per_dim(self, batch: Batch) -> torch.Tensor:
        """Per-image L_vlb = L_T + sum_t L_t in bits/dim (Ho et al. eq. 5), one network pass
        per timestep over the batch, from t = T - 1 down to 0 (as improved-diffusion's
        calc_bpd_loop); the q_sample noise comes from the global RNG."""
        d, c = self.diffusion, self.config
        x0 = batch.images.to(self.device)
        labels = self._net_labels(batch.labels, x0.shape[0])
        with eval_mode(self.unet):
            total = d.prior_bpd(x0)
            for index in reversed(range(d.num_timesteps)):
                t = torch.full((x0.shape[0],), index, device=self.device, dtype=torch.long)
                xt = d.q_sample(x0, t, torch.randn_like(x0))
                eps, v = self._apply(xt, t, d, labels)
                pred = d.p_mean_variance(eps, xt, t, c.variance, v, c.clip_denoised)
                total = total + d.vlb_terms(x0, xt, t, pred, c.likelihood_cdf)
        return total
