"""One conformance suite for every registered generator (parametrised, never special-cased).

Each generator is tested with its tiny configuration from the shipped ``smoke`` spec (or,
for the generators added later, the ``extras`` spec), so a new generator joins the suite by
registering and adding its entry there.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.data.datasets import Digits
from genbench.generators import GENERATORS, Batch, DataShape
from tests.trainkit import fit

SHAPE = DataShape(channels=1, image_size=16, num_classes=10)


def _smoke_models():
    models = {}
    for name in ("smoke", "extras"):
        spec, source = read_spec(name)
        plan = resolve(spec, source, Overrides())
        models |= {m.generator: m for m in plan.models.values()}
    return models


SMOKE = _smoke_models()


@pytest.fixture(params=GENERATORS.names())
def name(request):
    return request.param


def _make(name: str, seed: int = 0):
    if name not in SMOKE:
        pytest.fail(
            f"generator {name!r} has no entry in benchmarks/specs/smoke.toml or extras.toml"
        )
    torch.manual_seed(seed)
    cls = GENERATORS.get(name)
    return cls(SMOKE[name].config, SHAPE, torch.device("cpu"))


def _batch(n: int = 16) -> Batch:
    x, y = Digits.tensors("train")
    return Batch(x[:n], y[:n])


def test_config_round_trips(name):
    config = SMOKE[name].config
    cls = type(config)
    assert cls(**config.model_dump()) == config
    assert cls.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValidationError):
        cls(**config.model_dump(), not_a_field=1)


def test_train_step_updates_and_reports_finite_losses(name):
    gen = _make(name)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    losses = fit(gen, _batch())
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses.values())
    after = gen.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "one training step must change some parameters"


def test_sample_shape_range_and_nfe(name):
    gen = _make(name)
    images = gen.sample([0, 1, 2])
    assert images.shape == (3, SHAPE.channels, gen.image_size, gen.image_size)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert images.min() >= -1.0 and images.max() <= 1.0
    nfe = gen.nfe()
    assert isinstance(nfe, int) and nfe >= 1
    assert gen.num_parameters() > 0


def test_image_depends_only_on_its_seed(name):
    gen = _make(name)
    fit(gen, _batch())  # leave train mode and moving statistics non-trivial
    torch.manual_seed(123)
    many = gen.sample([5, 9, 2, 7])
    torch.manual_seed(999)  # the global RNG must not matter
    one = gen.sample([2])
    pair = gen.sample([7, 5])
    torch.testing.assert_close(many[2:3], one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(many[[3, 0]], pair, rtol=1e-5, atol=1e-5)
    assert (many[0] - many[1]).abs().max() > 1e-3, "different seeds must give different images"


def test_state_dict_round_trip_reproduces_samples(name):
    gen = _make(name, seed=0)
    fit(gen, _batch())
    other = _make(name, seed=1)
    assert not torch.allclose(gen.sample([0, 1]), other.sample([0, 1]))
    other.load_state_dict(gen.state_dict())
    torch.testing.assert_close(gen.sample([0, 1]), other.sample([0, 1]))
    with pytest.raises(KeyError):
        other.load_state_dict({"nonexistent.weight": torch.zeros(1)})


def test_checkpoint_file_round_trip(name, tmp_path):
    from genbench.benchmarks.checkpoints import load_checkpoint, save_checkpoint

    gen = _make(name, seed=0)
    fit(gen, _batch())
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(gen, path, SMOKE[name], steps=1)
    other = _make(name, seed=1)
    load_checkpoint(other, path, GENERATORS.canonical(name))
    torch.testing.assert_close(gen.sample([4, 2]), other.sample([4, 2]))
