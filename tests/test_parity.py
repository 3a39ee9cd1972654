"""Parameter parity with the authors' CIFAR-10 networks (issue 18, item 7), for the
networks that already reproduce them; docs/generators.md has the table of all of them."""

from __future__ import annotations

import pytest
import torch

from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.generators.ddpm import DDPM, DDPMConfig

# (model of cifar10.toml, network, the authors' count)
REFERENCE = [
    ("ddpm", "unet", 52_550_000),  # improved-diffusion's CIFAR-10 model: 52.55M
    ("ddgan", "G", 48_430_000),  # denoising-diffusion-gan, NCSN++ generator: 48.43M
    ("ddgan", "D", 12_740_000),  # denoising-diffusion-gan, Discriminator_small: 12.74M
    ("edm", "net", 55_730_000),  # EDM's DDPM++ (SongUNet) for CIFAR-10: 55.73M
    ("vdpm", "net", 60_810_000),  # v-diffusion-torch's CIFAR-10 UNet: 60.81M
]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("model", "net", "theirs"), REFERENCE)
def test_cifar10_network_has_the_authors_parameter_count(model, net, theirs):
    spec, source = read_spec("cifar10")
    (resolved,) = resolve(spec, source, Overrides(models=[model])).models.values()
    gen = resolved.generator_class(resolved.config, resolved.data_shape, torch.device("cpu"))
    ours = _count(gen.modules()[net])
    assert abs(ours / theirs - 1) < 0.005, (model, net, ours, theirs)


def test_ho_et_al_default_has_their_parameter_count():
    """DDPM's defaults are Ho et al.'s CIFAR-10 model: 35.75M parameters."""
    resolved = resolve(*read_spec("cifar10"), Overrides(models=["ddpm"])).models["ddpm"]
    gen = DDPM(DDPMConfig(), resolved.data_shape, torch.device("cpu"))
    assert abs(_count(gen.unet) / 35_750_000 - 1) < 0.005


def test_improved_ddpm_network_equals_openais_count_exactly():
    """improved-diffusion's CIFAR-10 flags (128 channels x (1, 2, 2, 2), 3 blocks, attention
    at 16 and 8 with 4 heads, scale-shift norm, learned sigmas) built by OpenAI's own code
    (guided-diffusion-sdk, a test-only dependency) and by us: the same number of parameters,
    the middle attention's GroupNorm included (diffusers leaves it out under scale-shift)."""
    from guided_diffusion.unet import UNetModel

    with torch.device("meta"):
        theirs = UNetModel(
            image_size=32,
            in_channels=3,
            model_channels=128,
            out_channels=6,
            num_res_blocks=3,
            attention_resolutions=(2, 4),  # downsampling factors: 16 and 8 px
            dropout=0.3,
            channel_mult=(1, 2, 2, 2),
            num_heads=4,
            use_scale_shift_norm=True,
        )
    resolved = resolve(*read_spec("cifar10"), Overrides(models=["ddpm"])).models["ddpm"]
    ours = DDPM(resolved.config, resolved.data_shape, torch.device("cpu"))
    assert _count(ours.unet) == _count(theirs)
