"""Shared generator helpers: the diffusers UNet builder and eval mode."""

from __future__ import annotations

import pytest
import torch

from genbench.generators.unet import build_unet, unet_apply


def test_ddpm_cifar10_unet_has_the_published_size():
    net = build_unet(
        image_size=32,
        in_channels=3,
        out_channels=3,
        channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
    )
    # Ho et al. 2020 report 35.7M parameters for their CIFAR-10 model.
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(35.7e6, rel=0.005)
    kinds = [type(b).__name__ for b in net.down_blocks]
    assert kinds == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]


def test_unet_apply_shapes_and_class_embedding():
    torch.manual_seed(0)
    net = build_unet(
        image_size=8,
        in_channels=1,
        out_channels=2,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        norm_groups=4,
        num_class_embeds=3,
    )
    x = torch.randn(2, 1, 8, 8)
    a = unet_apply(net, x, torch.tensor(5.0), torch.tensor([0, 0]))
    b = unet_apply(net, x, torch.tensor([5.0, 5.0]), torch.tensor([0, 2]))
    assert a.shape == (2, 2, 8, 8)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1]), "the class label must change the output"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 10, "channel_mult": (1, 2, 2)}, "divisible"),
        ({"attn_resolutions": (5,)}, "not among"),
        ({"norm_groups": 3}, "norm_groups"),
    ],
)
def test_unet_builder_rejects_impossible_layouts(kwargs, match):
    args = dict(
        image_size=8,
        in_channels=1,
        out_channels=1,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        norm_groups=4,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_unet(**args)


def test_eval_mode_restores_each_modules_own_mode_even_after_an_error():
    from genbench.generators.base import eval_mode

    training, frozen = torch.nn.Dropout(0.5), torch.nn.Dropout(0.5).eval()
    with eval_mode(training, frozen):
        assert not training.training and not frozen.training
    assert training.training and not frozen.training
    with pytest.raises(RuntimeError), eval_mode(training):
        raise RuntimeError("sampling failed")
    assert training.training


def test_random_hflip_mirrors_each_image_by_its_own_draw():
    from genbench.generators.base import random_hflip

    images = torch.arange(6 * 1 * 2 * 3, dtype=torch.float32).view(6, 1, 2, 3)
    torch.manual_seed(1)
    flips = torch.rand(6) < 0.5
    torch.manual_seed(1)
    out = random_hflip(images)
    assert 0 < flips.sum() < 6  # this seed flips some and keeps some
    for i in range(6):
        expected = images[i].flip(-1) if flips[i] else images[i]
        assert torch.equal(out[i], expected)
