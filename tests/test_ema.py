"""The harness-owned EMA: decay rules, averaging maths, and its use by the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genbench.benchmarks.ema import EMA, ema_beta


def test_beta_from_fixed_decay_and_halflife():
    assert ema_beta(batch_size=128, step=7, decay=0.9999) == 0.9999
    # After half-life's worth of images at constant beta, the old weight has halved.
    beta = ema_beta(batch_size=512, step=10**6, halflife_kimg=500)
    assert beta ** (500_000 / 512) == pytest.approx(0.5, rel=1e-9)
    # Ramp-up caps the half-life at ratio x images seen (EDM): 10 steps of 512 at 0.05.
    ramped = ema_beta(batch_size=512, step=10, halflife_kimg=500, rampup_ratio=0.05)
    assert ramped == pytest.approx(0.5 ** (512 / (10 * 512 * 0.05)))
    with pytest.raises(ValueError):
        ema_beta(batch_size=1, step=1)


def test_ema_averages_parameters_and_copies_integer_buffers():
    net = nn.BatchNorm1d(3)
    ema = EMA({"net": net})
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.fill_(2.0)
    net.num_batches_tracked.fill_(5)
    ema.update(0.75)
    ema.update(0.75)
    # Two updates toward a constant target c from w0: c + beta^2 (w0 - c).
    expected = 2.0 + 0.75**2 * (start - 2.0)
    torch.testing.assert_close(ema.shadow["net"]["weight"], expected)
    assert int(ema.shadow["net"]["num_batches_tracked"]) == 5
    ema.copy_to_modules()
    torch.testing.assert_close(net.weight.detach(), expected)


def test_spec_rejects_two_ema_rules():
    from genbench.benchmarks.spec import TrainSection

    with pytest.raises(ValueError, match="not both"):
        TrainSection(ema_decay=0.9, ema_halflife_kimg=1.0)
    with pytest.raises(ValueError, match="needs ema_halflife_kimg"):
        TrainSection(ema_rampup_ratio=0.05)
    assert not TrainSection().ema and TrainSection(ema_decay=0.5).ema


def test_training_loop_samples_with_the_average(tmp_path):
    """With EMA on, the networks hold the average of the trajectory after training."""
    from genbench.benchmarks.plan import Overrides, resolve
    from genbench.benchmarks.spec import read_spec
    from genbench.benchmarks.trainer import Trainer
    from genbench.data.datasets import Digits
    from genbench.generators import GENERATORS, Batch, DataShape

    spec, source = read_spec("smoke")
    plan = resolve(spec, source, Overrides(models=["dcgan"], train_steps=3))
    model = plan.models["dcgan"]
    model.train = model.train.model_copy(update={"ema_decay": 0.5, "log_every": 1})
    torch.manual_seed(0)
    gen = GENERATORS.get("dcgan")(model.config, DataShape(1, 16, 10), torch.device("cpu"))
    x, y = Digits.tensors("train")
    data = iter([Batch(x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]) for i in range(3)])

    G = gen.modules()["G"]
    trajectory = [{k: v.clone() for k, v in G.state_dict().items()}]
    trainer = Trainer(gen, model.train)
    original_step = trainer.train_step

    def step_and_record(batch):
        original_step(batch)
        trajectory.append({k: v.clone() for k, v in G.state_dict().items()})

    trainer.train_step = step_and_record
    info = trainer.fit(data, "dcgan", tmp_path / "log.jsonl")
    assert len(trajectory) == 4 and info["train_steps"] == 3
    assert info["ema"] == 0.5
    key = next(k for k, v in trajectory[0].items() if v.is_floating_point() and v.dim() > 1)
    avg = trajectory[0][key]
    for snap in trajectory[1:]:
        avg = 0.5 * avg + 0.5 * snap[key]
    torch.testing.assert_close(G.state_dict()[key], avg)
    assert not torch.allclose(G.state_dict()[key], trajectory[-1][key])
    assert math.isfinite(info["train_time_s"])
