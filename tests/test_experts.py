"""Ensembles of expert denoisers (eDiff-I) in EDM: routing, training intervals, K = 1."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pydantic import ValidationError

from genbench.generators import Batch, DataShape
from genbench.generators.ddpm import DDPM, DDPMConfig
from genbench.generators.edm import EDM, EDMConfig
from genbench.generators.experts import ExpertNets, log_spaced_boundaries
from genbench.generators.guidance import GuidedSettings
from tests.test_ddpm import TINY as DDPM_BASE
from tests.test_edm import TINY
from tests.trainkit import fit, wake

SHAPE = DataShape(channels=1, image_size=8, num_classes=10)
CPU = torch.device("cpu")


def _edm(seed: int = 0, **overrides) -> EDM:
    torch.manual_seed(seed)
    return EDM(EDMConfig(**{**TINY, **overrides}), SHAPE, CPU)


def _sigma_of_c_noise(c_noise: torch.Tensor) -> torch.Tensor:
    return (4 * c_noise).exp()  # EDM's c_noise = ln(sigma) / 4


def test_default_boundaries_are_equal_in_log_sigma() -> None:
    b = log_spaced_boundaries(0.002, 80.0, 4)
    logs = [math.log(v) for v in (0.002, *b, 80.0)]
    steps = [hi - lo for lo, hi in itertools.pairwise(logs)]
    assert len(b) == 3 and steps == pytest.approx([steps[0]] * 4)
    assert _edm(experts=4).expert_boundaries() == pytest.approx(b)
    assert _edm(experts=2, expert_boundaries=(1.5,)).expert_boundaries() == (1.5,)


@pytest.mark.parametrize(
    ("experts", "boundaries", "message"),
    [
        (3, (1.0,), "3 experts need 2 boundaries"),
        (3, (2.0, 1.0), "ascending"),
        (0, None, "greater than or equal to 1"),
    ],
)
def test_bad_expert_settings_are_refused(experts, boundaries, message) -> None:
    with pytest.raises(ValidationError, match=message):
        EDMConfig(**TINY, experts=experts, expert_boundaries=boundaries)


def test_one_expert_is_the_plain_model_bit_for_bit() -> None:
    plain, one = _edm(3), _edm(3, experts=1)
    assert type(one.net) is type(plain.net) and not isinstance(one.net, ExpertNets)
    state = plain.net.state_dict()
    assert one.net.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in one.net.state_dict().items())
    settings = GuidedSettings(steps=3)
    labels = torch.tensor([1, 2, 3])
    seeds = [0, 1, 2]
    assert torch.equal(plain.sample(seeds, labels, settings), one.sample(seeds, labels, settings))


def test_experts_start_equal_and_count_every_parameter() -> None:
    plain, ens = _edm(1), _edm(1, experts=3)
    assert isinstance(ens.net, ExpertNets) and len(ens.net.experts) == 3
    first = ens.net.experts[0].state_dict()
    for expert in ens.net.experts[1:]:
        assert all(torch.equal(v, first[k]) for k, v in expert.state_dict().items())
    assert ens.num_parameters() == 3 * plain.num_parameters()


def test_equal_experts_give_the_plain_models_outputs() -> None:
    # K experts that hold the plain network's weights are the plain network: sampling (one
    # noise level per call, one expert per call) bit for bit, and a mixed-noise training
    # batch (rows scattered to experts and gathered back) to rounding.
    plain = wake(_edm(2))
    ens = _edm(2, experts=3)
    for expert in ens.net.experts:
        expert.load_state_dict(plain.net.state_dict())
    settings = GuidedSettings(steps=4)
    labels = torch.tensor([0, 5])
    assert torch.equal(plain.sample([7, 8], labels, settings), ens.sample([7, 8], labels, settings))
    x = torch.randn(6, 1, 8, 8)
    sigma = torch.tensor([0.003, 0.02, 0.3, 1.0, 9.0, 70.0])
    owners = ens.net.owner(ens.precond.coefficients(sigma).c_noise)
    assert owners.tolist() == [0, 0, 1, 1, 2, 2]
    y = torch.arange(6)
    torch.testing.assert_close(ens.denoise(x, sigma, y), plain.denoise(x, sigma, y))


def test_each_expert_trains_only_on_its_noise_levels() -> None:
    gen = _edm(4, experts=3, p_std=2.0)
    bounds = [0.0, *gen.expert_boundaries(), math.inf]
    seen: list[list[torch.Tensor]] = [[] for _ in range(3)]
    for k, expert in enumerate(gen.net.experts):
        expert.register_forward_pre_hook(lambda mod, args, k=k: seen[k].append(args[1].detach()))
    before = [torch.cat([p.detach().flatten() for p in e.parameters()]) for e in gen.net.experts]
    torch.manual_seed(0)
    fit(gen, Batch(torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 10), steps=3)
    counts = []
    for k in range(3):
        sigma = _sigma_of_c_noise(torch.cat(seen[k]))
        counts.append(len(sigma))
        # float32 c_noise: the boundary itself can round to either side by an ulp
        assert (sigma >= bounds[k] * (1 - 1e-5)).all()
        assert (sigma < bounds[k + 1] * (1 + 1e-5)).all()
    assert sum(counts) == 3 * 32 and min(counts) > 0
    # each expert was updated away from the shared start (by its own rows only)
    after = [torch.cat([p.detach().flatten() for p in e.parameters()]) for e in gen.net.experts]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not torch.equal(after[0], after[1]) and not torch.equal(after[1], after[2])


def test_an_expert_no_row_reaches_gets_no_update() -> None:
    # Boundaries far above every training sigma: expert 0 owns every row, expert 1 none.
    gen = _edm(5, experts=2, expert_boundaries=(1e6,))
    idle = [p.detach().clone() for p in gen.net.experts[1].parameters()]
    torch.manual_seed(0)
    fit(gen, Batch(torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)), steps=2)
    after = gen.net.experts[1].parameters()
    assert all(torch.equal(a, b) for a, b in zip(idle, after, strict=True))


def test_sampling_switches_experts_by_noise_level_and_nfe_counts_calls() -> None:
    gen = _edm(6, experts=2, sampler="euler")
    calls: list[int] = []
    for k, expert in enumerate(gen.net.experts):
        expert.register_forward_pre_hook(lambda mod, args, k=k: calls.append(k))
    settings = GuidedSettings(steps=6)
    gen.sample([0, 1], settings=settings)
    sigmas = gen.sigmas(6)[:-1]
    expected = [int(s >= gen.expert_boundaries()[0]) for s in sigmas.tolist()]
    assert calls == expected and set(calls) == {0, 1}
    assert gen.nfe(settings) == len(calls) == 6


def test_an_edm_pickle_imports_only_into_one_expert() -> None:
    with pytest.raises(ValueError, match="experts = 1"):
        _edm(experts=2).import_state({})


# --------------------------------------------------------------------------- DDPM

DDPM_TINY = {**DDPM_BASE, "num_timesteps": 50, "sample_steps": 10}


def _ddpm(seed: int = 0, **overrides) -> DDPM:
    torch.manual_seed(seed)
    return DDPM(DDPMConfig(**{**DDPM_TINY, **overrides}), SHAPE, CPU)


def test_ddpm_one_expert_is_the_plain_model_bit_for_bit() -> None:
    plain, one = wake(_ddpm(3)), wake(_ddpm(3, experts=1))
    assert not isinstance(one.unet, ExpertNets)
    assert one.unet.state_dict().keys() == plain.unet.state_dict().keys()
    assert torch.equal(plain.sample([0, 1]), one.sample([0, 1]))


def test_ddpm_default_boundaries_split_its_sigmas_evenly_in_log() -> None:
    gen = _ddpm(experts=3)
    abar = gen.diffusion.alphas_cumprod
    sigmas = ((1 - abar) / abar).sqrt()
    expected = log_spaced_boundaries(float(sigmas[0]), float(sigmas[-1]), 3)
    assert gen.expert_boundaries() == pytest.approx(expected)
    assert gen.num_parameters() == 3 * _ddpm().num_parameters()


def test_ddpm_equal_experts_give_the_plain_models_outputs() -> None:
    plain = wake(_ddpm(2))
    ens = _ddpm(2, experts=2)
    for expert in ens.unet.experts:
        expert.load_state_dict(plain.unet.state_dict())
    assert torch.equal(plain.sample([4, 5]), ens.sample([4, 5]))
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 30, 49])
    assert ens.unet.owner(t.float() * 1000 / 50).tolist() != [0, 0, 0, 0]
    got_all = ens._outputs(x, t, ens.diffusion, None)
    want_all = plain._outputs(x, t, plain.diffusion, None)
    for got, want in zip(got_all, want_all, strict=True):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want)


def test_ddpm_each_expert_trains_only_on_its_timesteps() -> None:
    gen = _ddpm(4, experts=2)
    abar = gen.diffusion.alphas_cumprod
    sigma_of_t = ((1 - abar) / abar).sqrt()
    boundary = gen.expert_boundaries()[0]
    seen: list[list[torch.Tensor]] = [[], []]
    for k, expert in enumerate(gen.unet.experts):
        expert.register_forward_pre_hook(
            lambda mod, args, k=k: seen[k].append(args[1].detach()), with_kwargs=False
        )
    torch.manual_seed(0)
    fit(gen, Batch(torch.rand(32, 1, 16, 16) * 2 - 1, None), steps=2)
    t0, t1 = (torch.cat(v).mul(50 / 1000).round().long() for v in seen)
    assert len(t0) + len(t1) == 2 * 32 and len(t0) > 0 and len(t1) > 0
    assert (sigma_of_t[t0] < boundary).all() and (sigma_of_t[t1] >= boundary).all()
