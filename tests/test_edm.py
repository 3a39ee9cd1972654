"""EDM specifics: Table 1 preconditionings, the eq. 5 schedule, Algorithms 1 and 2 on a
Gaussian whose exact denoiser is known, NFE counts, guidance and the published settings."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from diffusers import EDMEulerScheduler
from pydantic import ValidationError

from genbench.generators import GENERATORS, Batch, DataShape
from genbench.generators.edm import (
    EDM,
    PRECONDITIONINGS,
    Churn,
    EDMConfig,
    EDMPreconditioning,
    VEPreconditioning,
    VPPreconditioning,
    sample_ode,
    sample_sde,
    sigma_steps,
)
from genbench.generators.guidance import GuidedSettings
from genbench.generators.songunet import SongUNet
from tests.trainkit import fit, trained_and_untrained, trainer, wake

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)
TINY = dict(
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    dropout=0.0,
    norm_groups=4,
    steps=3,
)
SHAPE = DataShape(channels=1, image_size=8, num_classes=10)


def _tiny(seed: int = 0, **overrides) -> EDM:
    torch.manual_seed(seed)
    return EDM(EDMConfig(**{**TINY, **overrides}), SHAPE, torch.device("cpu"))


# --------------------------------------------------------------------------- Table 1


def test_edm_coefficients_match_table_1():
    c = EDMPreconditioning().coefficients(torch.tensor([0.5], dtype=torch.float64))
    # sigma = sigma_data = 0.5: c_skip = 1/2, c_out = 0.5/sqrt(2), c_in = sqrt(2), ln(0.5)/4
    assert c.c_skip.item() == pytest.approx(0.5)
    assert c.c_out.item() == pytest.approx(0.5 / math.sqrt(2))
    assert c.c_in.item() == pytest.approx(math.sqrt(2))
    assert c.c_noise.item() == pytest.approx(math.log(0.5) / 4)
    # diffusers' EDM scheduler as an independent reference over the whole range
    ref = EDMEulerScheduler(sigma_data=0.5)
    c = EDMPreconditioning().coefficients(SIGMAS)
    x, f = torch.ones_like(SIGMAS), torch.full_like(SIGMAS, 0.3)
    torch.testing.assert_close(c.c_in, ref.precondition_inputs(x, SIGMAS))
    torch.testing.assert_close(c.c_noise, ref.precondition_noise(SIGMAS))
    torch.testing.assert_close(c.c_skip * x + c.c_out * f, ref.precondition_outputs(x, f, SIGMAS))


def test_vp_coefficients_match_table_1():
    vp = VPPreconditioning()
    t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
    exponent = 0.5 * 19.9 * t**2 + 0.1 * t  # sigma(t)^2 + 1 = exp(beta_d t^2 / 2 + beta_min t)
    sigma = (exponent.exp() - 1).sqrt()
    c = vp.coefficients(sigma)
    torch.testing.assert_close(c.c_noise, 999 * t)  # (M - 1) sigma^-1(sigma)
    torch.testing.assert_close(c.c_in, (-exponent / 2).exp())  # 1 / sqrt(sigma^2 + 1)
    torch.testing.assert_close(c.c_out, -sigma)
    torch.testing.assert_close(c.c_skip, torch.ones_like(sigma))
    assert vp.sigma_min == pytest.approx(sigma[0].item()) and vp.sigma_max == pytest.approx(
        math.sqrt(math.exp(10.05) - 1)
    )


def test_ve_coefficients_match_table_1():
    c = VEPreconditioning().coefficients(SIGMAS)
    torch.testing.assert_close(c.c_noise, torch.log(SIGMAS / 2))
    torch.testing.assert_close(c.c_out, SIGMAS)
    torch.testing.assert_close(c.c_in, torch.ones_like(SIGMAS))
    torch.testing.assert_close(c.c_skip, torch.ones_like(SIGMAS))
    assert c.c_noise[SIGMAS == 3.0].item() == pytest.approx(math.log(1.5))


@pytest.mark.parametrize("name", sorted(PRECONDITIONINGS))
def test_effective_loss_weight_is_one(name):
    """Section 5: lambda(sigma) c_out(sigma)^2 = 1 for all three designs of Table 1."""
    precond = PRECONDITIONINGS[name](EDMConfig())
    c_out = precond.coefficients(SIGMAS).c_out
    torch.testing.assert_close(precond.loss_weight(SIGMAS) * c_out**2, torch.ones_like(SIGMAS))


def test_training_noise_distributions():
    torch.manual_seed(0)
    n = 200_000
    log_edm = EDMPreconditioning().sample_sigma(n, torch.device("cpu")).log()
    assert log_edm.mean().item() == pytest.approx(-1.2, abs=0.01)  # P_mean
    assert log_edm.std().item() == pytest.approx(1.2, abs=0.01)  # P_std
    log_ve = VEPreconditioning().sample_sigma(n, torch.device("cpu")).log()
    lo, hi = math.log(0.02), math.log(100)
    assert lo <= log_ve.min().item() and log_ve.max().item() <= hi
    assert log_ve.mean().item() == pytest.approx((lo + hi) / 2, abs=0.02)  # log-uniform
    vp = VPPreconditioning()
    t = vp.t_of_sigma(vp.sample_sigma(n, torch.device("cpu")).double())
    assert t.mean().item() == pytest.approx(0.5, abs=0.005)  # t ~ U(eps_t, 1)
    assert t.min().item() > 0 and t.max().item() <= 1 + 1e-5


# --------------------------------------------------------------------------- eq. 5


def test_sigma_schedule_closed_form():
    t = sigma_steps(18)
    assert t.shape == (19,) and t.dtype == torch.float64
    assert t[0].item() == pytest.approx(80.0) and t[17].item() == pytest.approx(0.002)
    assert t[18].item() == 0.0 and bool((t[1:] < t[:-1]).all())
    # N = 3: the middle level is the mean of the end points in sigma^(1/rho) space
    mid = sigma_steps(3, 0.002, 80.0, 7.0)[1].item()
    assert mid == pytest.approx(((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7)
    assert sigma_steps(1, 0.002, 80.0).tolist() == [80.0, 0.0]
    ref = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    ref.set_timesteps(18)
    torch.testing.assert_close(t.float(), ref.sigmas, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- samplers

MU = torch.tensor([-0.5, 0.0, 0.8], dtype=torch.float64)
STD = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)


def gaussian_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[y | y + sigma n = x] for y ~ N(MU, STD^2 I): the exact (ideal) denoiser."""
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def _standard_noise(n: int, seed: int = 0) -> torch.Tensor:
    """Normal draws shifted and scaled to sample mean 0 and variance 1 per dimension, so the
    samplers' (affine) outputs show only their own error, not Monte-Carlo error."""
    z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (z - z.mean(0)) / z.std(0, correction=0)


def _moment_errors(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> float:
    mean_err = (x.mean(0) - mean).abs().max().item()
    var_err = (x.var(0, correction=0) / var - 1).abs().max().item()
    return max(mean_err, var_err)


def test_heun_sampler_reproduces_gaussian_data_better_with_more_steps():
    noise = _standard_noise(1000)
    errors = [
        _moment_errors(sample_ode(gaussian_denoiser, noise, sigma_steps(n)), MU, STD**2)
        for n in (8, 16, 32, 64, 128)
    ]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    # Starting at N(0, 80^2) instead of the exact marginal leaves a bias of MU STD / 80 in
    # the mean; everything else is the sampler's discretisation error.
    assert errors[-1] <= 0.8 * 1.0 / 80 + 1e-3, errors
    assert errors[0] > 0.5  # 8 steps are visibly too few for STD = 0.2


@pytest.mark.parametrize(("order", "rate"), [(2, 4.0), (1, 2.0)])
def test_samplers_converge_to_the_exact_ode_solution_at_their_order(order, rate):
    # The probability-flow ODE from x(80) = 80 z ends at MU + (80 z - MU) STD / sqrt(STD^2 + 80^2).
    k = STD / (STD**2 + 80.0**2).sqrt()
    mean, var = MU * (1 - k), (80.0 * k) ** 2
    noise = _standard_noise(1000)
    errors = [
        _moment_errors(sample_ode(gaussian_denoiser, noise, sigma_steps(n), order), mean, var)
        for n in (32, 64, 128)
    ]
    ratios = [a / b for a, b in itertools.pairwise(errors)]
    assert all(0.85 * rate < r < 1.25 * rate for r in ratios), (errors, ratios)


def test_euler_matches_diffusers_edm_euler_scheduler():
    """Our Euler sampler + EDM preconditioning against diffusers' EDMEulerScheduler."""
    precond = EDMPreconditioning()

    def F(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x_in) * (1 + 0.1 * c_noise)  # any smooth stand-in for a network

    def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
        c = precond.coefficients(torch.tensor(sigma, dtype=x.dtype))
        return c.c_skip * x + c.c_out * F(c.c_in * x, c.c_noise)

    ref = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    ref.set_timesteps(10)
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    x = noise * ref.sigmas[0]
    for t in ref.timesteps:
        sigma = ref.sigmas[ref.index_for_timestep(t)]
        out = F(ref.scale_model_input(x, t), ref.precondition_noise(sigma))
        x = ref.step(out, t, x).prev_sample
    ours = sample_ode(D, noise, sigma_steps(10), order=1)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def _no_noise(i: int) -> torch.Tensor:
    raise AssertionError(f"step {i} drew churn noise although no step has churn")


@pytest.mark.parametrize("order", [1, 2])
def test_stochastic_sampler_without_churn_equals_deterministic(order):
    noise = _standard_noise(64)
    sigmas = sigma_steps(12)
    ode = sample_ode(gaussian_denoiser, noise, sigmas, order)
    for churn in [Churn(s_churn=0.0), Churn(s_churn=40.0, s_tmin=100.0)]:  # none inside window
        sde = sample_sde(gaussian_denoiser, noise, sigmas, churn, _no_noise, order)
        torch.testing.assert_close(sde, ode, rtol=0, atol=0)


def test_stochastic_sampler_keeps_the_gaussian_data_distribution():
    n, steps = 40_000, 128
    gen = torch.Generator().manual_seed(3)
    draws: list[int] = []

    def step_noise(i: int) -> torch.Tensor:
        draws.append(i)
        return torch.randn(n, 3, generator=gen, dtype=torch.float64)

    churn = Churn(s_churn=20.0, s_tmin=0.01, s_tmax=50.0, s_noise=1.0)
    x = sample_sde(gaussian_denoiser, _standard_noise(n), sigma_steps(steps), churn, step_noise)
    inside = [i for i, t in enumerate(sigma_steps(steps)[:-1].tolist()) if 0.01 <= t <= 50.0]
    assert draws == inside  # one draw per step inside [S_tmin, S_tmax], none outside
    # Monte-Carlo standard errors: about 0.005 (mean) and 0.7% (variance), plus about 1%
    # of discretisation error (churned steps t_hat -> t_next are longer than plain ones).
    assert _moment_errors(x, MU, STD**2) < 0.035
    ode = sample_ode(gaussian_denoiser, _standard_noise(n), sigma_steps(steps))
    assert (x - ode).abs().mean() > 0.05  # the churn really changed the trajectories


@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_sampler_denoiser_calls(steps):
    calls = []

    def D(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return gaussian_denoiser(x, sigma)

    noise, sigmas = _standard_noise(4), sigma_steps(steps)
    churn = Churn(s_churn=10.0)
    runs = {
        "heun": (lambda: sample_ode(D, noise, sigmas, 2), 2 * steps - 1),
        "euler": (lambda: sample_ode(D, noise, sigmas, 1), steps),
        "stochastic heun": (
            lambda: sample_sde(D, noise, sigmas, churn, lambda i: torch.randn_like(noise)),
            2 * steps - 1,
        ),
    }
    for label, (run, expected) in runs.items():
        calls.clear()
        run()
        assert len(calls) == expected, label
        assert 0.0 not in calls  # the last step to sigma = 0 is never evaluated


# --------------------------------------------------------------------------- the generator


def _count_network_rows(gen: EDM) -> list[int]:
    rows: list[int] = []
    gen.net.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize(
    ("overrides", "steps", "guidance", "expected"),
    [
        ({}, 4, None, 7),
        ({}, 18, None, 35),
        ({"sampler": "euler"}, 4, None, 4),
        ({"s_churn": 5.0}, 4, None, 7),
        ({}, 4, 1.0, 7),
        ({}, 4, 3.0, 14),
    ],
)
def test_generator_nfe_counts_network_evaluations(overrides, steps, guidance, expected):
    gen = _tiny(**overrides)
    rows = _count_network_rows(gen)
    seeds = [0, 1, 2]
    settings = GuidedSettings(steps=steps, guidance=guidance)
    gen.sample(seeds, torch.tensor([1, 2, 3]), settings)
    assert gen.nfe(settings) == expected
    assert sum(rows) == expected * len(seeds)


def test_default_sampler_is_heun_with_18_steps():
    gen = GENERATORS.get("edm")(EDMConfig(**{**TINY, "steps": 18}), SHAPE, torch.device("cpu"))
    assert gen.nfe() == 35 and gen.nfe(GuidedSettings(steps=18)) == 35
    with pytest.raises(ValidationError, match="steps"):
        EDM.make_settings(gen.config, SHAPE, {"steps": "ddim50"})  # EDM's steps are a count


def test_churn_noise_comes_from_each_samples_own_seed():
    gen = _tiny(s_churn=20.0)
    labels = torch.tensor([4, 8, 2])
    torch.manual_seed(1)
    many = gen.sample([11, 3, 7], labels, settings=GuidedSettings(steps=4))
    torch.manual_seed(2)
    one = gen.sample([3], labels[1:2], settings=GuidedSettings(steps=4))
    torch.testing.assert_close(many[1:2], one, rtol=1e-5, atol=1e-5)
    deterministic = _tiny(s_churn=0.0).sample([11, 3, 7], labels, GuidedSettings(steps=4))
    assert (many - deterministic).abs().max() > 1e-3


def test_guidance_follows_the_scale_convention():
    gen = wake(_tiny())  # DDPM++ starts with a near-zero output layer
    gen.net.eval()
    labels = torch.tensor([1, 5])
    null = torch.full((2,), 10)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((2,), 1.5)
    with torch.no_grad():
        cond, uncond = gen.denoise(x, sigma, labels), gen.denoise(x, sigma, null)
        assert (cond - uncond).abs().max() > 1e-4  # the label matters
        guided = gen._sampling_denoiser(2, labels, 3.0)(x, 1.5)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    # s = 1: the conditional model; s = 0: the unconditional (null-label) model
    one, zero = GuidedSettings(guidance=1.0), GuidedSettings(guidance=0.0)
    torch.testing.assert_close(gen.sample([0, 1], labels, one), gen.sample([0, 1], labels))
    torch.testing.assert_close(
        gen.sample([0, 1], labels, zero), gen.sample([0, 1]), rtol=1e-4, atol=1e-4
    )


def test_label_dropout_replaces_labels_by_the_null_class():
    gen = _tiny(label_dropout=0.25)
    torch.manual_seed(0)
    labels = gen._train_labels(torch.arange(40_000) % 10, 40_000)
    dropped = labels == 10
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.01)
    torch.testing.assert_close(labels[~dropped], (torch.arange(40_000) % 10)[~dropped])
    assert _tiny(class_conditional=False).conditional is False
    assert gen.net.map_label.in_features == 10  # the null class is the zero one-hot


def test_learning_rate_warms_up_linearly():
    gen = _tiny(lr=1e-3, lr_rampup_kimg=0.1)  # 100 images
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    run = trainer(gen, 16)
    lrs = []
    for _ in range(8):
        run.train_step(Batch(x, y))
        lrs.append(run.read_logs()["lr"])
    expected = [1e-3 * min(16 * k / 100, 1.0) for k in range(1, 9)]
    assert lrs == pytest.approx(expected)
    assert run.optimizers["net"].param_groups[0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("parts", [2, 4])
def test_gradient_accumulation_matches_the_full_batch(parts):
    x, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 10
    grads = []
    for k in (1, parts):
        gen = _tiny(label_dropout=0.1)
        torch.manual_seed(3)  # the same draws: they are made for the whole batch
        fit(gen, Batch(x, y), grad_accum=k)
        grads.append(torch.cat([p.grad.flatten() for p in gen.net.parameters()]))
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precond", ["vp", "ve"])
def test_vp_and_ve_ablations_train_and_sample(precond):
    gen = _tiny(precond=precond)
    losses = fit(gen, Batch(torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)))
    assert math.isfinite(losses["loss"])
    sigmas = gen.sigmas(6)
    # the schedule stays inside the noise levels this preconditioning was trained on
    assert sigmas[0].item() == pytest.approx(min(80.0, gen.precond.sigma_max))
    assert sigmas[-2].item() == pytest.approx(max(0.002, gen.precond.sigma_min))
    images = gen.sample([0, 1], settings=GuidedSettings(steps=3))
    assert torch.isfinite(images).all() and images.abs().max() <= 1


def test_published_settings_are_the_defaults():
    c = EDMConfig()
    assert (c.precond, c.sigma_data, c.p_mean, c.p_std) == ("edm", 0.5, -1.2, 1.2)
    assert (c.sigma_min, c.sigma_max, c.rho, c.steps, c.sampler) == (0.002, 80.0, 7.0, 18, "heun")
    assert (c.lr, c.lr_rampup_kimg, c.beta1, c.beta2, c.adam_eps) == (
        1e-3,
        10_000,
        0.9,
        0.999,
        1e-8,
    )
    assert (c.channels, c.channel_mult, c.num_res_blocks) == (128, (2, 2, 2), 4)
    assert (c.attn_resolutions, c.dropout) == ((16,), 0.13)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        gen = EDM(c, DataShape(3, 32, 10), torch.device("meta"))
    # EDM's class-conditional DDPM++ (no augmentation): 55.73M less the 9 x 128 augment map,
    # plus the 10 x 128 + 128 label map
    assert gen.num_parameters() == 55_733_891 - 9 * 128 + 10 * 128 + 128
    # augmentation is EDM's CIFAR-10 setting but off by default (cifar10.toml turns it on)
    assert isinstance(gen.net, SongUNet) and gen.net.map_augment is None and c.augment == 0


def test_config_rejects_unknown_choices():
    with pytest.raises(ValidationError):
        EDMConfig(precond="iddpm")
    with pytest.raises(ValidationError):
        EDMConfig(sampler="dpm")
    with pytest.raises(ValidationError):
        EDMConfig(label_dropout=1.0)
    with pytest.raises(ValidationError, match="sigma_min"):
        EDMConfig(sigma_min=90.0)


@pytest.mark.slow
def test_smoke_edm_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim on the shipped smoke settings, with fewer steps and samples."""
    runs = trained_and_untrained("smoke", "edm", 100, 200, tmp_path)
    assert runs[0]["nfe"] == 11  # 6 Heun steps
    assert runs[100]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]
