"""DCGAN specifics: the architecture at each supported size, and its optimiser settings."""

from __future__ import annotations

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
