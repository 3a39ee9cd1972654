"""The runner's bits/dim stage for likelihood models (generic over any generator)."""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from genbench.benchmarks.sampling import bits_per_dim, has_likelihood
from genbench.generators import GENERATORS, DataShape
from genbench.generators.dcgan import DCGAN


class _MeanPixelLikelihood(DCGAN):
    """A stand-in likelihood model: bits/dim = 1 + mean pixel value of each image."""

    def bits_per_dim(self, batch):
        self.seen_sizes.append(batch.images.shape[-1])
        return 1.0 + batch.images.mean(dim=(1, 2, 3))


def test_bits_per_dim_averages_over_the_first_images_with_standard_error():
    gen = _MeanPixelLikelihood(
        DCGAN.Config(ngf=8, ndf=8, nz=4), DataShape(1, 16, 0), torch.device("cpu")
    )
    gen.seen_sizes = []
    images = torch.linspace(-1, 1, 10).view(10, 1, 1, 1).expand(10, 1, 8, 8).contiguous()
    data = TensorDataset(images, torch.zeros(10, dtype=torch.long))
    out = bits_per_dim(gen, data, count=6, batch_size=4)
    first = 1.0 + torch.linspace(-1, 1, 10)[:6].double()
    assert out["num_images"] == 6 and out["split"] == "test"
    assert math.isclose(out["value"], float(first.mean()), rel_tol=1e-6)
    assert math.isclose(out["std_err"], float(first.std() / 6**0.5), rel_tol=1e-6)
    assert gen.seen_sizes == [16, 16], "images are resized to the model's resolution"


def test_only_generators_overriding_the_hook_count_as_likelihood_models():
    assert not has_likelihood("dcgan")
    assert "dcgan" in GENERATORS
