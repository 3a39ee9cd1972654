"""Reference implementations ``bench speed --baseline`` times side by side with ours.

``diffusers``: the stock ``diffusers.DDPMPipeline`` (fp32 weights, eager, torch's default
flags, so TF32 convolutions on CUDA and recorded as ``tf32`` there, its own
``DDPMScheduler`` and noise) around a fresh copy of the case's untrained ``UNet2DModel``,
with as many denoising steps as the case has network evaluations. Cases whose sampling
network is not an unconditional ``UNet2DModel`` have no baseline.
"""

from __future__ import annotations

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from genbench.benchmarks.build import build_untrained
from genbench.benchmarks.fastpath import FastPaths
from genbench.benchmarks.plan import ResolvedModel, RunPlan
from genbench.benchmarks.timing import SamplingTimer
from genbench.core.errors import GenbenchError
from genbench.generators import Generator

BASELINES: tuple[str, ...] = ("diffusers",)


def check_baseline(name: str | None) -> None:
    """A usage error for a baseline name that is not one of ``BASELINES`` (None: none)."""
    if name is not None and name not in BASELINES:
        raise GenbenchError(f"--baseline: unknown {name!r}; valid: {', '.join(BASELINES)}")


def _unet(gen: Generator) -> UNet2DModel | None:
    mods = gen.modules()
    for name in gen.sampling_modules():
        net = mods[name]
        if isinstance(net, UNet2DModel) and not net.config.num_class_embeds:
            return net
    return None


def stock_precision(device: torch.device) -> str:
    """The precision the stock pipeline runs at under torch's default flags: ``tf32`` on a
    CUDA device with TF32 tensor cores (Ampere and newer) while cuDNN may use them for
    convolutions (torch's default; its matrix products stay fp32, but the UNet's work is
    almost all convolutions), else ``fp32``. Its peak share is taken against that
    precision's peak: against the strict fp32 peak an H200 showed 172%."""
    from genbench.eval.extractors import tf32_in_effect

    return "tf32" if tf32_in_effect(device, torch.backends.cudnn.allow_tf32) else "fp32"


def diffusers_pipeline(unet: UNet2DModel, nfe: int) -> DDPMPipeline:
    """A ``DDPMPipeline`` around ``unet`` whose scheduler can take ``nfe`` steps."""
    cfg = unet.config
    learned = cfg.out_channels == 2 * cfg.in_channels
    scheduler = DDPMScheduler(
        num_train_timesteps=max(1000, nfe),
        variance_type="learned_range" if learned else "fixed_small",
    )
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def baseline_timer(
    name: str, plan: RunPlan, model: ResolvedModel, batch_size: int, device: torch.device
) -> tuple[SamplingTimer, str, int] | None:
    """A timer of the ``name`` baseline for ``model`` at ``batch_size`` (not started):
    (timer, generator label, parameters), or None when the model has no such baseline."""
    check_baseline(name)
    gen = build_untrained(model, plan.benchmark.seed, device)  # untouched by any fast path
    unet = _unet(gen)
    if unet is None:
        return None
    unet.eval()
    nfe = gen.nfe(model.settings)
    pipe = diffusers_pipeline(unet, nfe)
    noise = torch.Generator(device=device).manual_seed(0)

    def call() -> torch.Tensor:
        with torch.no_grad():
            return pipe(
                batch_size=batch_size,
                generator=noise,
                num_inference_steps=nfe,
                output_type="pt",
                return_dict=False,
            )[0]

    timer = SamplingTimer(
        call,
        device=device,
        batch_size=batch_size,
        nfe=nfe,
        fast=FastPaths(precision=stock_precision(device)),
    )
    params = sum(p.numel() for p in unet.parameters())
    return timer, "diffusers.DDPMPipeline", params
