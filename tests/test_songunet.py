"""EDM's DDPM++ network and non-leaking augmentation (issue 18, item 2)."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.generators import Batch, DataShape
from genbench.generators.augment import AUGMENT_DIM, _rotate, _scale, _translate, _warp, augment
from genbench.generators.edm import EDM, EDMConfig, EDMPreconditioning, loss_per_sample
from genbench.generators.songunet import Block, SongUNet
from tests.trainkit import fit, wake


def _net(**kw) -> SongUNet:
    torch.manual_seed(0)
    args = {"image_size": 16, "in_channels": 1, "out_channels": 1, "channels": 16}
    return SongUNet(**{**args, "channel_mult": (1, 2), "num_blocks": 2, **kw})


def _attention_sizes(net: SongUNet) -> tuple[list[int], list[int]]:
    """Feature-map sizes of the attention blocks, encoder+middle and decoder, in order."""
    sizes: dict[int, int] = {}
    hooks = [
        b.register_forward_hook(lambda m, i, o: sizes.__setitem__(id(m), o.shape[-1]))
        for b in net.modules()
        if isinstance(b, Block) and b.attention
    ]
    net(torch.randn(1, 1, 16, 16), torch.zeros(1))
    for h in hooks:
        h.remove()
    enc = [sizes[id(b)] for b in [*net.enc, *net.mid] if b.attention]
    dec = [sizes[id(b)] for level in net.dec for b in level if b.attention]
    return enc, dec


def test_attention_placement_is_ddpmpp():
    """Encoder: after every block at 8 px; middle: one; decoder: one per attention level,
    after its last block (UNet2DModel puts one after every decoder block)."""
    enc, dec = _attention_sizes(_net(attn_resolutions=(8,)))
    assert enc == [8, 8, 8] and dec == [8]
    enc, dec = _attention_sizes(_net(attn_resolutions=(16, 8)))
    assert enc == [16, 16, 8, 8, 8] and dec == [8, 16]


def test_residuals_are_scaled_by_one_over_sqrt_two():
    block = Block(8, 8, 16, attention=True)
    with torch.no_grad():
        block.conv1.weight.zero_(), block.conv1.bias.zero_()
        block.proj.weight.zero_(), block.proj.bias.zero_()
    x = torch.randn(2, 8, 4, 4)
    # both branches silent: the skip, scaled once by the block and once by the attention
    torch.testing.assert_close(block(x, torch.randn(2, 16)), x * 0.5)


def test_embedding_frequencies_and_the_null_label():
    net = _net(num_classes=10)
    freqs = net.map_noise.freqs
    assert freqs[0].item() == 1.0 and freqs[-1].item() == pytest.approx(1e-4)
    e = net.map_noise(torch.tensor([0.0]))
    assert e[0, : len(freqs)].abs().max() == 0 and (e[0, len(freqs) :] == 1).all()  # [sin, cos]
    # "no label" (index 10) is the zero one-hot: the label map then adds only its bias
    null = net.embed(torch.tensor([0.3]), torch.tensor([10]))
    net.map_label.weight.data.zero_()
    torch.testing.assert_close(null, net.embed(torch.tensor([0.3]), torch.tensor([3])))


def test_output_starts_near_zero_and_learns():
    net = _net()
    out = net(torch.randn(4, 1, 16, 16), torch.randn(4))
    assert out.abs().max() < 1e-3  # EDM's init_zero (1e-5) on the last convolution
    out.sum().backward()
    assert net.conv_in.weight.grad.abs().sum() > 0  # gradients still reach the input


def test_augment_labels_condition_the_network():
    net = wake(_edm(augment=0.12)).net.eval()  # no dropout
    x, c = torch.randn(2, 1, 16, 16), torch.zeros(2)
    assert net.map_augment.in_features == AUGMENT_DIM and net.map_augment.bias is None
    none, zeros = (
        net(x, c, torch.tensor([10, 10])),
        net(x, c, torch.tensor([10, 10]), torch.zeros(2, 9)),
    )
    torch.testing.assert_close(none, zeros)  # sampling: no augmentation = zero labels
    assert (net(x, c, torch.tensor([10, 10]), torch.ones(2, 9)) - none).abs().max() > 1e-4


# --------------------------------------------------------------------------- augmentation


def _images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_augmentation_at_p0_is_the_identity():
    x = _images()
    y, labels = augment(x, 0.0)
    assert torch.equal(y, x) and labels.shape == (64, AUGMENT_DIM) and not labels.any()


def test_augmentation_at_p1_keeps_range_and_records_labels():
    x = _images(256)
    torch.manual_seed(0)
    y, labels = augment(x, 1.0)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    # every transform drawn: flips are 0/1 with about half flipped, the others non-zero
    assert labels.shape == (256, 9)
    assert set(labels[:, :2].unique().tolist()) == {0.0, 1.0}
    assert 0.35 < labels[:, 0].mean() < 0.65 and 0.35 < labels[:, 1].mean() < 0.65
    assert (labels[:, [2, 3, 5, 7, 8]] != 0).float().mean() > 0.99
    # half of the anisotropic scalings are along the image axes: (n, 0) labels
    assert (labels[:, 6] == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)
    angle = torch.atan2(labels[:, 4], labels[:, 3] + 1)  # (cos - 1, sin) -> the angle
    torch.testing.assert_close(labels[:, 3] + 1, angle.cos())
    assert not torch.equal(y, x)


def test_augmentation_probability_is_p_per_transform():
    torch.manual_seed(0)
    _, labels = augment(_images(4000), 0.12)
    for col in (2, 3, 5, 7):  # scale, rotation, anisotropy, translation
        assert (labels[:, col] != 0).float().mean().item() == pytest.approx(0.12, abs=0.02)
    assert labels[:, 0].mean().item() == pytest.approx(0.5, abs=0.03)  # x-flips at any p > 0
    assert labels[:, 1].mean().item() == pytest.approx(0.06, abs=0.015)


def test_flip_labels_say_which_images_were_flipped():
    x = _images(200)
    torch.manual_seed(2)
    y, labels = augment(x, 1e-9)  # x-flips only
    flipped = labels[:, 0] == 1
    assert 0 < flipped.sum() < 200 and not labels[:, 1:].any()
    assert torch.equal(y[flipped], x[flipped].flip(3)) and torch.equal(y[~flipped], x[~flipped])


def test_warp_applies_the_inverse_map_exactly_on_linear_images():
    """Bilinear sampling and box averaging are exact on a linear image, so inside the border
    the output at centred pixel u is the input's value at g_inv u."""
    h = w = 32
    ys, xs = torch.meshgrid(
        torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij"
    )
    image = (0.03 * xs - 0.02 * ys + 0.1)[None, None]
    one = torch.ones(1)
    g_inv = _rotate(one * 0.3) @ _scale(one * 1.1, one * 0.9) @ _translate(one * 1.5, one * -2.0)
    out = _warp(image, g_inv)
    src = g_inv[0] @ torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w)])
    expected = (0.03 * src[0] - 0.02 * src[1] + 0.1).reshape(h, w)
    inside = (src[0].abs() < 12) & (src[1].abs() < 12)
    torch.testing.assert_close(out[0, 0].flatten()[inside], expected.flatten()[inside])


def test_augmentation_rejects_a_bad_probability():
    with pytest.raises(ValueError, match="probability"):
        augment(_images(2), 1.5)


# --------------------------------------------------------------------------- EDM wiring


def _edm(**kw) -> EDM:
    torch.manual_seed(0)
    config = EDMConfig(
        channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), **kw
    )
    return EDM(config, DataShape(1, 16, 10), torch.device("cpu"))


def test_edm_trains_with_augmentation_and_samples_without():
    gen = _edm(augment=0.5)
    batch = Batch(torch.rand(8, 1, 16, 16) * 2 - 1, torch.arange(8))
    torch.manual_seed(0)
    draws = gen.draw(batch)
    assert draws.augment_labels is not None and draws.augment_labels.shape == (8, 9)
    assert math.isfinite(fit(gen, batch)["loss"])
    assert gen.sample([0, 1]).shape == (2, 1, 16, 16)
    assert _edm().draw(batch).augment_labels is None  # off by default


def test_edm_loss_sums_over_pixels():
    """EDM's loss: lambda(sigma) ||D - y||^2 summed over pixels (the batch mean is the
    trainer's)."""
    y = torch.zeros(3, 1, 4, 4)
    sigma = torch.full((3,), 0.5)
    precond = EDMPreconditioning()
    loss = loss_per_sample(
        lambda x, s: torch.full_like(x, 0.1), precond, y, sigma, torch.zeros_like(y)
    )
    torch.testing.assert_close(loss, precond.loss_weight(sigma) * 0.01 * 16)
