"""Cold diffusion (Bansal et al. 2022): its degradations, both samplers, the colour prior
of the start, and the smoke entry's quality claim."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genbench.data.datasets import Digits
from genbench.generators import Batch, DataShape
from genbench.generators.cold import ColdConfig, ColdDiffusion, ColdSettings, Degrade, run_sampler
from tests.trainkit import fit, trained_and_untrained

DIGITS = DataShape(channels=1, image_size=16, num_classes=10)
RGB = DataShape(channels=3, image_size=16, num_classes=0)
TINY = dict(
    num_steps=10,
    channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    dropout=0.0,
    norm_groups=8,
    time_embed_dim=64,
    lr=2e-3,
    hflip=False,
)
KINDS = ["blur", "downsample", "mask", "noise"]


def _images(n: int = 6, data: DataShape = RGB) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, data.channels, data.image_size, data.image_size, generator=g) * 2 - 1


@pytest.mark.parametrize("kind", ["blur", "downsample"])
def test_the_last_step_maps_every_image_to_its_flat_mean_a_fixed_point(kind):
    d = Degrade(ColdConfig(degradation=kind, **TINY), RGB)
    x = _images()
    end = d(x, d.T)
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(end, mean.expand_as(x), rtol=0, atol=1e-6)
    for t in range(d.T + 1):  # nothing moves the fixed point again
        torch.testing.assert_close(d(end, t), end, rtol=0, atol=1e-6)
    # so two images with the same channel means end at the same point
    other = x.flip(-1).roll(3, dims=-2)  # the same pixels elsewhere: the same means
    torch.testing.assert_close(d(other, d.T), end, rtol=0, atol=1e-6)
    assert not torch.allclose(d(other, d.T // 2), d(x, d.T // 2))  # not before T


@pytest.mark.parametrize("kind", KINDS)
def test_degradation_starts_at_the_data_and_grows(kind):
    d = Degrade(ColdConfig(degradation=kind, **TINY), RGB)
    x, z = _images(), torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(d(x, 0, z), x)
    dist = [float((d(x, t, z) - x).pow(2).mean()) for t in range(d.T + 1)]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(dist)), dist
    assert dist[-1] > 0.1


def test_mask_and_noise_follow_their_definitions():
    x, z = _images(), torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mask = Degrade(ColdConfig(degradation="mask", **TINY), RGB)
    for t in (1, 4, 10):
        masked = (mask(x, t, z) == z).all(dim=1)  # per pixel, every channel filled
        assert int(masked[0].sum()) == math.ceil(256 * t / 10)
        assert torch.equal(masked[0], masked[5])  # one fixed order for every image
    noise = Degrade(ColdConfig(degradation="noise", **TINY), RGB)
    a = float(noise.abar[3])
    torch.testing.assert_close(noise(x, 3, z), math.sqrt(a) * x + math.sqrt(1 - a) * z)
    assert torch.equal(noise(x, 10, z), z)


@pytest.mark.parametrize("sampler", ["improved", "naive"])
@pytest.mark.parametrize("kind", KINDS)
def test_exact_restoration_reproduces_the_data_point(kind, sampler):
    """Algorithm 2 (and 1) with R(x_t, t) = x0 from x_T = D(x0, T) end at x0."""
    d = Degrade(ColdConfig(degradation=kind, **TINY), RGB)
    x0, z = _images(), torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    seen = []

    def exact(x, t):
        seen.append(t)
        return x0

    out = run_sampler(sampler, d, exact, d(x0, d.T, z), z, d.T)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)
    assert seen == list(range(d.T, 0, -1))


def test_improved_sampler_telescopes_where_naive_does_not():
    """With an inexact R, algorithm 2 keeps x_t's own detail that D(R(x_t)) lost."""
    d = Degrade(ColdConfig(degradation="blur", **TINY), RGB)
    x0 = _images()
    blurry = lambda x, t: d(x, 2)  # noqa: E731  (a restorer that never restores)
    start = d(x0, 3)
    naive = run_sampler("naive", d, blurry, start, start, 3)
    improved = run_sampler("improved", d, blurry, start, start, 3)
    assert (improved - x0).abs().mean() < (naive - x0).abs().mean()


def test_start_colours_follow_the_training_means():
    gen = ColdDiffusion(ColdConfig(degradation="blur", **TINY), RGB, torch.device("cpu"))
    images = _images(400)
    images[:, 0] = images[:, 0] * 0.2 + 0.5  # red mean 0.5, green and blue near 0
    gen.prior.observe(images)
    x_t, _ = gen.start(list(range(2000)))
    colours = x_t[:, :, 0, 0]
    assert (x_t == colours[:, :, None, None]).all()  # flat images
    means = images.mean(dim=(2, 3))
    torch.testing.assert_close(colours.mean(0), means.mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(colours.std(0), means.std(0), atol=0.01, rtol=0.1)
    again, _ = gen.start([7, 3])
    assert torch.equal(again, x_t[[7, 3]])  # by seed


def test_sampler_setting_chooses_the_algorithm():
    gen = ColdDiffusion(ColdConfig(degradation="mask", **TINY), DIGITS, torch.device("cpu"))
    x, y = Digits.tensors("train")
    fit(gen, Batch(x[:32], y[:32]), steps=2)
    improved = gen.sample([1, 2])
    assert torch.equal(gen.sample([1, 2], None, ColdSettings(sampler="improved")), improved)
    naive = gen.sample([1, 2], None, ColdSettings(sampler="naive"))
    assert (naive - improved).abs().max() > 1e-4
    assert gen.nfe() == 10 and gen.prior.count == 64  # the prior saw both updates' batches


def test_spec_sampler_setting_is_typed(cli, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(
        '[benchmark]\nname = "c"\ndataset = "digits"\n[models.cold]\ngenerator = "cold"\n'
        'sample = { sampler = "sideways" }\n'
    )
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2 and "models.cold.sample" in result.err and "sampler" in result.err
    spec.write_text(spec.read_text().replace('"cold"\nsample', '"ddpm"\nsample'))
    spec.write_text(spec.read_text().replace('"sideways"', '"naive"'))
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2 and "sampler" in result.err  # a setting DDPM does not have


@pytest.mark.slow
def test_smoke_cold_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim on the shipped extras settings, with fewer steps and samples."""
    runs = trained_and_untrained("extras", "cold", 100, 200, tmp_path)
    assert runs[0]["nfe"] == 10
    assert runs[100]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]
