"""DCGAN specifics: the architecture at each supported size, and its optimiser settings."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from pydantic import ValidationError

from genbench.generators import GENERATORS, DataShape
from genbench.generators.dcgan import DCGAN, DCGANConfig


@pytest.mark.parametrize(("size", "ups"), [(16, 2), (32, 3), (64, 4)])
def test_shapes_at_each_supported_size(size, ups):
    config = DCGANConfig(image_size=size, ngf=8, ndf=8, nz=12)
    gan = DCGAN(config, DataShape(channels=3, image_size=32), torch.device("cpu"))
    images = gan.sample([0, 1])
    assert images.shape == (2, 3, size, size)
    assert gan.D(images).shape == (2,)
    # one 4x4 projection plus `ups` stride-2 transposed convolutions (Radford et al. fig. 1)
    convs = [m for m in gan.G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == ups + 1 and convs[0].in_channels == 12
    assert convs[0].out_channels == 8 * 2 ** (ups - 1) and convs[-1].out_channels == 3


def test_unsupported_size_is_rejected_by_the_config():
    with pytest.raises(ValidationError):
        DCGANConfig(image_size=28)


def test_paper_settings_are_the_defaults():
    c = DCGANConfig()
    assert (c.nz, c.ngf, c.ndf, c.beta1) == (100, 64, 64, 0.5)
    gan = GENERATORS.get("gan")(c, DataShape(3, 32), torch.device("cpu"))
    opts = gan.training().optimizers
    param = [torch.nn.Parameter(torch.zeros(1))]
    adam_g, adam_d = opts["G"].build(param), opts["D"].build(param)
    assert adam_g.defaults["betas"][0] == 0.5 and adam_d.defaults["lr"] == 1.25e-4
    assert (opts["G"].lr, opts["D"].lr) == (c.g_lr, 1.25e-4)
    assert opts["G"].schedule.decay == "constant" and opts["G"].grad_clip == 0
    weights = [m.weight for m in gan.G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    std = torch.cat([w.flatten() for w in weights]).std().item()
    assert std == pytest.approx(0.02, rel=0.05)  # N(0, 0.02) initialisation


@pytest.mark.gpu
def test_sampling_on_cuda_matches_cpu():
    config = DCGANConfig(ngf=8, ndf=8, nz=12)
    torch.manual_seed(0)
    cpu = DCGAN(config, DataShape(1, 16), torch.device("cpu"))
    gpu = DCGAN(config, DataShape(1, 16), torch.device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    torch.testing.assert_close(gpu.sample([3, 4]).cpu(), cpu.sample([3, 4]), atol=1e-4, rtol=1e-4)


class _SpyEvaluator:
    """Records the size of every batch the extractor would see."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, ...]] = []
        self.first: torch.Tensor | None = None

    def update(self, images: torch.Tensor) -> None:
        self.sizes.append(tuple(images.shape[1:]))
        self.first = images if self.first is None else self.first

    def all_reduce(self) -> None:
        pass


def test_samples_reach_the_extractor_at_the_data_sets_resolution(tmp_path):
    """DCGAN at 64 px on 32 px CIFAR-10 shapes: the extractor gets 32 px samples (as it gets
    the real images), antialiased, and the grid keeps the generator's 64 px."""
    from genbench.benchmarks.sampling import sample_and_evaluate

    cifar = DataShape(channels=3, image_size=32, num_classes=10)
    gen = DCGAN(DCGANConfig(image_size=64, ngf=8, ndf=8, nz=16), cifar, torch.device("cpu"))
    model = mock.Mock()
    model.name = "dcgan"
    model.sample.seed_offset, model.sample.num_samples = 0, 10
    model.sample.batch_size, model.sample.grid_size = 4, 4
    model.sample.labels = None
    spy = _SpyEvaluator()
    out = sample_and_evaluate(gen, model, spy, tmp_path / "grid.png")
    assert spy.sizes == [(3, 32, 32)] * 3
    assert out["sample_resize"] == "bilinear_antialias 64->32"
    resized = torch.nn.functional.interpolate(
        gen.sample([0, 1, 2, 3]), size=32, mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(spy.first, resized)
    native = DCGAN(DCGANConfig(ngf=8, ndf=8, nz=16), cifar, torch.device("cpu"))
    assert "sample_resize" not in sample_and_evaluate(
        native, model, _SpyEvaluator(), tmp_path / "g2.png"
    )


def test_the_resize_is_recorded_with_the_metrics(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=0, num_samples=40, extra="")
    text = spec.read_text().replace(
        "config = { ngf = 8, ndf = 8, nz = 16 }",
        "config = { ngf = 8, ndf = 8, nz = 16, image_size = 32 }",
    )
    spec.write_text(text)
    result = cli("run", str(spec), "--out", str(tmp_path / "runs"))
    assert result.code == 0, result.err
    (metrics,) = (tmp_path / "runs").rglob("metrics.json")
    protocol = json.loads(metrics.read_text())["protocol"]
    assert protocol["sample_resize"] == "bilinear_antialias 32->16"
    assert protocol["input_size"] == 16
