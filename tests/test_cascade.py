"""Cascaded generation (Ho et al. 2022): a base generator at low resolution, then a
super-resolution diffusion model conditioned on its upsampled sample."""

from __future__ import annotations

import statistics

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import TimingSection, read_spec
from genbench.benchmarks.timing import measure_speed
from genbench.data.datasets import Digits
from genbench.generators import Batch
from genbench.generators.cascade import Cascade, CascadeConfig, CascadeSettings, upsample
from tests.trainkit import fit, trained_and_untrained

CPU = torch.device("cpu")
EXTRAS = resolve(*read_spec("extras"), Overrides()).models
MODEL = EXTRAS["cascade"]
SEEDS = [3, 8, 1]
LABELS = torch.tensor([4, 0, 9])


def _cascade(**overrides) -> Cascade:
    torch.manual_seed(0)
    config = MODEL.config.model_copy(update=overrides)
    return Cascade(config, MODEL.data_shape, CPU)


class _Identity(nn.Module):
    """An SR network that returns its condition: the 'perfect' identity-trained model."""

    def forward(self, x, t, labels=None, augment=None):
        return x[:, x.shape[1] // 2 :]


def test_identity_sr_returns_the_upsampled_base_image():
    gen = _cascade(sample_aug=0.0)
    x, y = Digits.tensors("train")
    fit(gen, Batch(x[:16], y[:16]))  # a base that is not at its initialisation
    gen.sr = _Identity()
    low = gen.base.sample(SEEDS, LABELS)
    assert low.shape[-1] == 8
    out = gen.sample(SEEDS, LABELS)
    assert out.shape == (3, 1, 16, 16)
    torch.testing.assert_close(out, upsample(low, 16).clamp(-1, 1), rtol=0, atol=1e-5)


def test_conditioning_augmentation_at_sampling_moves_the_condition_by_seed():
    gen = _cascade(sample_aug=0.3)
    gen.sr = _Identity()
    low = gen.base.sample(SEEDS, LABELS)
    out = gen.sample(SEEDS, LABELS)
    diff = out - upsample(low, 16).clamp(-1, 1)
    assert 0.1 < diff.std() < 0.5  # about 0.3 before clipping
    assert torch.equal(gen.sample(SEEDS[1:], LABELS[1:]), out[1:])  # by seed only


def test_nfe_and_stage_times_add_up():
    gen = _cascade()
    assert gen.nfe() == gen.base.nfe() + 10 == 21
    assert gen.nfe(CascadeSettings(steps=4)) == gen.base.nfe() + 4
    assert gen.num_parameters() == gen.base.num_parameters() + sum(
        p.numel() for p in gen.sr.parameters()
    )
    timing = TimingSection(repeats=3, warmup=1, batch_size=4)
    record = measure_speed(gen, MODEL, timing)
    assert set(record.stage_s) == {"base", "sr"} and min(record.stage_s.values()) > 0
    # the stages partition each call: their means add up to the calls' mean time
    mean = statistics.fmean(record.raw_s)
    assert 0.95 * mean <= sum(record.stage_s.values()) <= mean


def test_both_stages_train_on_their_resolution():
    gen = _cascade()
    training = gen.training()
    assert set(training.optimizers) == {"base_net", "sr"}
    assert [p.name for p in training.phases] == ["base_main", "sr"]
    x, y = Digits.tensors("train")
    batch = Batch(x[:8], y[:8])
    base_draws = training.phases[0].draw(batch)
    assert base_draws.images.shape[-1] == 8  # the base sees the data downsampled
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    logs = fit(gen, batch)
    assert {"base_loss", "loss_sr"} <= set(logs)
    changed = {
        k.split(".")[0] for k, v in gen.state_dict().items() if not torch.equal(v, before[k])
    }
    assert {"base_net", "sr"} <= changed


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="no generator a cascade can start from"):
        CascadeConfig(base="cascade")
    with pytest.raises(ValidationError, match="not_a_field"):
        CascadeConfig(base="edm", base_config={"not_a_field": 1})
    with pytest.raises(ValueError, match="base_size 16 must be below the data's 16 px"):
        Cascade.check_settings(CascadeConfig(base_size=16), MODEL.data_shape, CascadeSettings())


@pytest.mark.slow
def test_extras_cascade_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim on the shipped extras settings, with fewer steps and samples;
    the stage times of the records (two timed calls) add up to no more than the whole."""
    runs = trained_and_untrained("extras", "cascade", 60, 100, tmp_path, repeats=2)
    for metrics in runs.values():
        assert metrics["nfe"] == 21
        stages = metrics["sample"]["stage_seconds"]
        assert (
            set(stages) == {"base", "sr"} and sum(stages.values()) <= metrics["sample"]["seconds"]
        )
        timing = metrics["timing"]
        assert sum(timing["stage_s"].values()) <= statistics.fmean(timing["raw_s"])
    assert runs[60]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]
