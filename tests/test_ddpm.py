"""DDPM specifics: the diffusion maths against closed forms and diffusers' schedulers, the
losses, respacing, guidance, published-checkpoint loading, bits/dim and the smoke claim."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from pydantic import ValidationError

from genbench.core.errors import CheckpointError
from genbench.generators import GENERATORS, Batch, DataShape
from genbench.generators.ddpm import DDPM, DDPMConfig, DDPMSettings
from genbench.generators.diffusion import (
    GaussianDiffusion,
    LossAwareTimesteps,
    discretized_gaussian_log_likelihood,
    get_betas,
    normal_kl,
    parse_steps,
)
from genbench.generators.guidance import guide
from genbench.generators.unet import build_unet
from tests.trainkit import fit, trained_and_untrained, trainer, wake

CPU = torch.device("cpu")
DIGITS = DataShape(channels=1, image_size=16, num_classes=10)
TINY = dict(
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    norm_groups=4,
    dropout=0.0,
    hflip=False,
    warmup_steps=0,
)
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _tiny(seed: int = 0, data: DataShape = DIGITS, **config) -> DDPM:
    """A tiny DDPM, its zero-initialised output layers woken (``trainkit.wake``)."""
    torch.manual_seed(seed)
    options = {**TINY, "num_timesteps": 50, "sample_steps": 10, **config}
    return wake(DDPM(DDPMConfig(**options), data, CPU), seed)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedules_equal_diffusers(name):
    ours = get_betas(name, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[name]).betas
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-8)


def test_schedule_end_points():
    lin = get_betas("linear", 1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    # T = 4000: end points scaled by 1000 / T, so alpha-bar_T stays close to T = 1000's
    lin4k = get_betas("linear", 4000)
    assert lin4k[-1].item() == pytest.approx(0.005)
    abar = [torch.prod(1 - b).item() for b in (lin, lin4k)]
    assert abar[1] == pytest.approx(abar[0], rel=0.1)
    cos = get_betas("cosine", 4000)
    assert cos.max().item() == pytest.approx(0.999)  # iDDPM's clip at the end of the chain
    assert (cos[1:] >= cos[:-1]).all()


# --------------------------------------------------------------------------- closed forms


def _abar(betas: torch.Tensor, t: int) -> float:
    return math.prod(1.0 - b for b in betas[: t + 1].tolist())  # prod_{s<=t} alpha_s


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_is_the_closed_form(name):
    d = GaussianDiffusion.from_schedule(name, 100)
    x0, noise = _images(3), torch.randn(3, 1, 16, 16)
    t = torch.tensor([0, 37, 99])
    out = d.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = _abar(d.betas, step)
        expected = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i]
        torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_is_the_product_of_gaussians(name):
    """q(x_{t-1}|x_t, x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0), both Gaussians: compare."""
    d = GaussianDiffusion.from_schedule(name, 100)
    x0, xt = _images(3), torch.randn(3, 1, 16, 16)
    t = torch.tensor([1, 42, 99])
    mean, var, log_var = d.q_posterior(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        beta, a_prev = d.betas[step].item(), _abar(d.betas, step - 1)
        precision = 1 / (1 - a_prev) + (1 - beta) / beta
        expected_mean = (
            math.sqrt(a_prev) * x0[i] / (1 - a_prev) + math.sqrt(1 - beta) * xt[i] / beta
        ) / precision
        torch.testing.assert_close(mean[i], expected_mean, rtol=1e-5, atol=1e-5)
        assert var[i].item() == pytest.approx(1 / precision, rel=1e-6)
        assert log_var[i].item() == pytest.approx(math.log(1 / precision), rel=1e-6)


# --------------------------------------------------------------------------- respacing


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["50", "ddim25", "10+15+20", 7, "1000"])
def test_respaced_betas_reproduce_alpha_bar_at_the_kept_steps(name, spacing):
    d = GaussianDiffusion.from_schedule(name, 1000)
    plan = parse_steps(spacing, 1000)
    r = d.respaced(plan.timesteps)
    kept = list(plan.timesteps)
    torch.testing.assert_close(r.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-7, atol=0)
    assert r.timestep_map.tolist() == kept


@pytest.mark.parametrize("num_timesteps", [1000, 4000])
def test_respacing_equals_improved_diffusion_for_every_count(num_timesteps):
    """Every N from 1 to T keeps the steps improved-diffusion's ``space_timesteps`` keeps
    (its float stride accumulation, not round(i * stride)); sections too."""
    from guided_diffusion.respace import space_timesteps  # the authors' code, a dev extra

    for n in range(1, num_timesteps + 1):
        ours = parse_steps(n, num_timesteps).timesteps
        assert ours == tuple(sorted(space_timesteps(num_timesteps, [n]))), n
    for sections in ("10+15+20", "3+250+1", "100+100+100+100+100"):
        counts = [int(c) for c in sections.split("+")]
        theirs = sorted(space_timesteps(num_timesteps, counts))
        assert parse_steps(sections, num_timesteps).timesteps == tuple(theirs), sections


def test_spacings():
    assert parse_steps("ddim25", 1000).timesteps == tuple(range(0, 1000, 40))
    assert parse_steps("ddim25", 1000).kind == "ddim"
    full = parse_steps(1000, 1000)
    assert full.kind == "ancestral" and full.timesteps == tuple(range(1000))
    ends = parse_steps("50", 1000).timesteps
    assert len(ends) == 50 and ends[0] == 0 and ends[-1] == 999
    sections = parse_steps("10+15+20", 300).timesteps  # sections [0,100), [100,200), [200,300)
    assert len(sections) == 45
    assert [sum(lo <= s < lo + 100 for s in sections) for lo in (0, 100, 200)] == [10, 15, 20]
    for bad in ("0", "1001", "ddim", "ddimx", "fast", "5++5"):
        with pytest.raises(ValueError, match="not a valid setting"):
            parse_steps(bad, 1000)
    # Commas separate lists of settings (bench speed --steps 50,ddim100): one grammar.
    with pytest.raises(ValueError, match=re.escape("with '+', e.g. '10+15+20'")):
        parse_steps("10,15,20", 300)


def test_invalid_sample_steps_are_a_config_error():
    with pytest.raises(ValidationError, match="not a valid setting"):
        DDPMConfig(num_timesteps=100, sample_steps="200")


# --------------------------------------------------------------------------- against diffusers


def _ddpm_pair(name: str, variance: str, steps: int | None):
    T = 1000
    ours = GaussianDiffusion.from_schedule(name, T)
    ref = DDPMScheduler(
        num_train_timesteps=T, beta_schedule=DIFFUSERS_SCHEDULE[name], variance_type=variance
    )
    if steps is not None:  # diffusers' "leading" respacing: 0, T/N, 2T/N, ...
        ref.set_timesteps(steps)
        ours = ours.respaced(sorted(ref.timesteps.tolist()))
    # Compare in float64: diffusers keeps alpha-bar in float32, where 1 - alpha-bar_1 (1e-4
    # to 2e-4) keeps only 3 to 4 digits; its step maths itself is dtype-agnostic.
    ref.alphas_cumprod = torch.cumprod(1 - ref.betas.double(), dim=0)
    ref.one = ref.one.double()
    return ours, ref


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize(("name", "steps"), [("linear", None), ("cosine", None), ("linear", 50)])
def test_ancestral_step_equals_diffusers(variance, name, steps):
    ours, ref = _ddpm_pair(name, variance, steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    channels = 6 if variance == "learned_range" else 3
    output = torch.randn(2, channels, 8, 8, generator=g, dtype=torch.float64) * 0.5
    eps, raw = output[:, :3], output[:, 3:]
    v = (raw + 1) / 2 if variance == "learned_range" else None
    for index in (len(ref.timesteps) - 1, len(ref.timesteps) // 2, 1, 0):
        timestep = sorted(ref.timesteps.tolist())[index] if steps else index
        seeded = torch.Generator().manual_seed(index)
        noise = torch.randn(x.shape, generator=seeded, dtype=torch.float64)
        expected = ref.step(output, timestep, x, generator=torch.Generator().manual_seed(index))
        t = torch.full((2,), index, dtype=torch.long)
        pred = ours.p_mean_variance(eps, x, t, variance, v, clip=True)
        got = ours.ancestral_step(pred, t, noise)
        torch.testing.assert_close(got, expected.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred.x0, expected.pred_original_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_step_equals_diffusers(eta, name):
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[name])
    ref.set_timesteps(25)
    plan = parse_steps("ddim25", 1000)
    assert plan.timesteps == tuple(sorted(ref.timesteps.tolist()))
    ours = GaussianDiffusion.from_schedule(name, 1000).respaced(plan.timesteps)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    for index in (24, 12, 1, 0):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(index))
        expected = ref.step(
            eps,
            plan.timesteps[index],
            x,
            eta=eta,
            use_clipped_model_output=True,
            variance_noise=noise,
        ).prev_sample
        t = torch.full((2,), index, dtype=torch.long)
        got = ours.ddim_step(eps, x, t, eta, noise, clip=True)
        # diffusers forms its coefficients in float32 (5e-5 off near t = 0); ours are
        # float64 cast once: within float32 rounding of the same step in float64.
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        exact = ours.ddim_step(eps.double(), x.double(), t, eta, noise.double(), clip=True)
        torch.testing.assert_close(got.double(), exact, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- variances, VLB


def test_learned_range_end_points_are_beta_tilde_and_beta():
    d = GaussianDiffusion.from_schedule("cosine", 100)
    x = torch.zeros(4, 1, 2, 2)
    t = torch.tensor([1, 10, 50, 99])
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    at_zero = d.log_variance("learned_range", t, x, zeros).exp()
    at_one = d.log_variance("learned_range", t, x, ones).exp()
    for i, step in enumerate(t.tolist()):
        a, a_prev, beta = _abar(d.betas, step), _abar(d.betas, step - 1), d.betas[step].item()
        tilde = (1 - a_prev) / (1 - a) * beta  # Ho et al. eq. 7
        torch.testing.assert_close(at_zero[i], torch.full_like(x[i], tilde), rtol=1e-5, atol=0)
        torch.testing.assert_close(at_one[i], torch.full_like(x[i], beta), rtol=1e-5, atol=0)
    half = d.log_variance("learned_range", t, x, zeros + 0.5)
    small, large = d.log_variance("fixed_small", t, x), d.log_variance("fixed_large", t, x)
    torch.testing.assert_close(half, (small + large) / 2)  # log-linear in between


def test_kl_of_a_distribution_with_itself_is_zero_and_positive_otherwise():
    mean, log_var = torch.randn(100), torch.randn(100)
    assert normal_kl(mean, log_var, mean, log_var).abs().max().item() < 1e-6
    other = normal_kl(mean, log_var, mean + 0.1, log_var - 0.2)
    assert (other > 0).all()
    # closed form for unit variances: (m1 - m2)² / 2
    torch.testing.assert_close(normal_kl(mean, 0 * mean, mean + 1, 0 * mean), 0.5 + 0 * mean)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_vlb_terms_are_non_negative(variance):
    d = GaussianDiffusion.from_schedule("cosine", 200)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(64, 1, 4, 4, generator=g) * 2 - 1
    t = torch.arange(64) * 3  # includes t = 0 (the decoder) and the end of the chain
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    eps = torch.randn(x0.shape, generator=g)
    v = torch.rand(x0.shape, generator=g) if variance == "learned_range" else None
    terms = d.vlb_terms(x0, xt, t, d.p_mean_variance(eps, xt, t, variance, v, clip=False))
    assert terms.shape == (64,) and (terms >= 0).all() and torch.isfinite(terms).all()
    assert (d.prior_bpd(x0) >= 0).all()


def test_vlb_term_vanishes_for_the_true_noise_and_posterior_variance():
    d = GaussianDiffusion.from_schedule("linear", 100)
    x0, noise = _images(8), torch.randn(8, 1, 16, 16)
    t = torch.arange(1, 100, 13)
    xt = d.q_sample(x0, t, noise)
    pred = d.p_mean_variance(noise, xt, t, "fixed_small", clip=False)
    assert d.vlb_terms(x0, xt, t, pred).abs().max().item() < 1e-4


def test_discretized_likelihood_sums_to_one_over_the_bins():
    bins = torch.linspace(-1, 1, 256)
    mean, log_scale = torch.full_like(bins, 0.3), torch.full_like(bins, math.log(0.2))
    probs = discretized_gaussian_log_likelihood(bins, mean, log_scale).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------- the generator


def test_output_layers_start_at_zero():
    """As improved-diffusion's zero_module: the last convolution of every residual block,
    every attention projection and the final convolution are zero, so the fresh network
    outputs zeros; the other layers keep their default initialisation."""
    data = DataShape(channels=3, image_size=16, num_classes=0)
    config = DDPMConfig(
        channels=16, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], norm_groups=8
    )
    gen = DDPM(config, data, torch.device("cpu"))
    zeroed = [
        name
        for name, p in gen.unet.named_parameters()
        if name.endswith((".conv2.weight", ".to_out.0.weight")) or name == "conv_out.weight"
    ]
    assert len(zeroed) >= 8
    params = dict(gen.unet.named_parameters())
    for name in zeroed:
        assert not params[name].any(), name
        assert not params[name.replace(".weight", ".bias")].any(), name
    assert params["conv_in.weight"].abs().sum() > 0
    x = torch.randn(2, 3, 16, 16)
    out = gen.unet(x, torch.tensor([3, 700])).sample
    assert out.shape == (2, gen.out_channels, 16, 16) and not out.any()


def test_backbones_match_the_papers():
    ddpm = DDPM(DDPMConfig(), DataShape(3, 32), CPU)
    assert ddpm.num_parameters() == 35_746_307  # Ho et al.: 35.7M
    assert ddpm.unet.config.out_channels == 3
    learned = _tiny(variance="learned_range", loss="hybrid")
    assert learned.unet.config.out_channels == 2  # eps and v per image channel


def test_defaults_are_ho_et_al():
    c = DDPMConfig()
    assert (c.num_timesteps, c.schedule, c.variance, c.loss) == (
        1000,
        "linear",
        "fixed_large",
        "simple",
    )
    assert (c.lr, c.dropout, c.channels, c.channel_mult, c.attn_resolutions) == (
        2e-4,
        0.1,
        128,
        (1, 2, 2, 2),
        (16,),
    )


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValidationError, match="learned_range"):
        DDPMConfig(variance="learned_range", loss="simple")
    with pytest.raises(ValidationError, match="norm_groups"):
        DDPMConfig(channels=12, norm_groups=8)


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean():
    grads = {}
    for loss in ("hybrid", "vlb"):
        gen = _tiny(variance="learned_range", loss=loss)
        terms = gen.losses(gen.draw(Batch(_images(8))))
        terms["vlb"].sum().backward()
        w = gen.unet.conv_out.weight.grad  # rows: eps channel, then v channel
        grads[loss] = (w[:1].abs().sum().item(), w[1:].abs().sum().item())
    assert grads["hybrid"][0] == 0.0 and grads["hybrid"][1] > 0
    assert grads["vlb"][0] > 0 and grads["vlb"][1] > 0


def test_hybrid_loss_is_simple_plus_lambda_t_vlb():
    gen = _tiny(variance="learned_range", loss="hybrid", hybrid_lambda=0.01)
    terms = gen.losses(gen.draw(Batch(_images(8))))
    torch.testing.assert_close(terms["total"], terms["mse"] + 0.01 * 50 * terms["vlb"])


def test_loss_aware_sampler_is_uniform_then_importance_weighted():
    sampler = LossAwareTimesteps(4, history=2, uniform_mix=0.0)
    sampler.update(torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([1.0, 2, 3, 4, 1, 2, 3]))
    torch.testing.assert_close(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    sampler.update(torch.tensor([3]), torch.tensor([4.0]))  # every history full now
    torch.testing.assert_close(sampler.probabilities(), torch.tensor([1, 2, 3, 4.0]).double() / 10)
    t, w = sampler.sample(1000, CPU)
    p = sampler.probabilities()[t]
    torch.testing.assert_close(w.double(), 1 / (4 * p))  # E_p[w · L] = mean over t of L


@pytest.mark.parametrize("config", [{}, {"variance": "learned_range", "loss": "hybrid"}])
def test_three_micro_batches_make_the_full_batch_update(config):
    batch = Batch(_images(9), torch.arange(9) % 10)
    params, grads = [], []
    for parts in (1, 3):
        gen = _tiny(conditional=True, **config)
        torch.manual_seed(5)  # the same draws for both
        logs = fit(gen, batch, steps=1, grad_accum=parts)
        assert math.isfinite(logs["loss"])
        params.append(gen.state_dict())
        grads.append({k: p.grad.clone() for k, p in gen.unet.named_parameters()})
    start = _tiny(conditional=True, **config).state_dict()
    changed = [k for k in params[0] if not torch.equal(params[0][k], start[k])]
    assert len(changed) > len(params[0]) // 2
    for key, value in grads[0].items():
        torch.testing.assert_close(grads[1][key], value, rtol=1e-4, atol=1e-7, msg=key)
        # Adam turns a gradient of rounding noise (attention key biases, whose true
        # gradient is 0) into a full step, so only elements with a real gradient compare.
        real = value.abs() > 1e-6
        name = f"unet.{key}"
        torch.testing.assert_close(params[1][name][real], params[0][name][real], rtol=0, atol=1e-6)


def test_learning_rate_warms_up_linearly():
    gen = _tiny(warmup_steps=10, lr=1e-3)
    run = trainer(gen, 4)
    lrs = []
    for _ in range(12):
        run.train_step(Batch(_images(4)))
        lrs.append(run.optimizers["unet"].param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-4 * s for s in range(1, 11)] + [1e-3, 1e-3])
    assert run.read_logs()["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("steps", "count"), [(None, 10), (50, 50), ("ddim5", 5), ("3+4+5", 12), ("25", 25)]
)
def test_nfe_counts_steps_and_guidance_doubles_it(steps, count):
    gen = _tiny(conditional=True)
    assert gen.nfe(DDPMSettings(steps=steps)) == count
    assert gen.nfe(DDPMSettings(steps=steps, guidance=1.0)) == count  # s = 1: conditional
    assert gen.nfe(DDPMSettings(steps=steps, guidance=3.0)) == 2 * count
    uncond = _tiny()
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        uncond.nfe(DDPMSettings(steps=steps, guidance=3.0))
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        DDPM.make_settings(uncond.config, DIGITS, {"guidance": 3.0})  # caught at spec load


def test_sample_takes_int_and_string_steps_and_ddim_eta_zero_is_deterministic(monkeypatch):
    import genbench.generators.ddpm as module

    gen = _tiny()
    torch.testing.assert_close(
        gen.sample([1, 2], settings=DDPMSettings(steps=10)),
        gen.sample([1, 2], settings=DDPMSettings(steps="10")),
    )
    with pytest.raises(ValueError, match=r"steps 'ddim11' is not a valid setting"):
        # no stride splits T = 50 into exactly 11 steps; a spec says so before training
        DDPM.make_settings(gen.config, DIGITS, {"steps": "ddim11"})
    streams = []
    real = module.seeded_randn
    monkeypatch.setattr(module, "seeded_randn", lambda *a, **k: streams.append(k) or real(*a, **k))
    gen.sample([1, 2], settings=DDPMSettings(steps="ddim5"))
    assert streams == [{"stream": 0}]  # only x_T: DDIM with eta = 0 draws no step noise
    streams.clear()
    gen.sample([1, 2], settings=DDPMSettings(steps="5"))
    assert [k["stream"] for k in streams] == [0, 1, 2, 3, 4]  # no noise at the last step


def test_guidance_one_is_the_conditional_model_and_guidance_combines_both():
    gen = _tiny(conditional=True)
    gen.eval()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([40, 20, 5])
    labels = torch.tensor([1, 4, 7])
    d = gen.diffusion
    cond, _ = gen._apply(x, t, d, labels)
    uncond, _ = gen._apply(x, t, d, torch.full_like(labels, 10))
    assert (cond - uncond).abs().max() > 1e-4  # the label matters, so the checks below bite
    torch.testing.assert_close(guide(cond, uncond, 1.0), cond)
    one, _ = gen._predict(x, t, d, labels, 1.0)
    torch.testing.assert_close(one, cond, rtol=1e-5, atol=1e-6)
    guided, _ = gen._predict(x, t, d, labels, 3.0)  # scale s = 3 is Ho & Salimans' w = 2
    torch.testing.assert_close(guided, 3 * cond - 2 * uncond, rtol=1e-4, atol=1e-5)
    seeds = [3, 8]
    torch.testing.assert_close(
        gen.sample(seeds, labels[:2], DDPMSettings(guidance=1.0)), gen.sample(seeds, labels[:2])
    )


def test_unconditional_when_the_data_has_no_labels():
    gen = _tiny(data=DataShape(1, 16, 0), conditional=True)
    assert not gen.conditional and gen.unet.class_embedding is None
    assert gen.sample([0]).shape == (1, 1, 16, 16)


def test_label_dropout_uses_the_null_class(monkeypatch):
    gen = _tiny(conditional=True, p_uncond=1.0)
    seen = []
    real = gen._outputs  # what training calls the network through
    monkeypatch.setattr(
        gen,
        "_outputs",
        lambda x, t, d, labels, *net: seen.append(labels) or real(x, t, d, labels, *net),
    )
    fit(gen, Batch(_images(4), torch.tensor([1, 2, 3, 4])))
    assert seen[0].tolist() == [10, 10, 10, 10]


# --------------------------------------------------------------------------- bits per dim


def test_bits_per_dim_of_the_exact_denoiser_of_one_image():
    """Data = one image x*: the exact eps is known in closed form; with fixed-small variance
    every KL term vanishes, leaving L_T plus the decoder NLL, both known in closed form."""
    gen = _tiny(num_timesteps=20, variance="fixed_small")
    target = _images(1)
    d = gen.diffusion

    def exact(x, t, diffusion, labels):
        return diffusion.eps_from_x0(x, t, target.expand_as(x)), None

    gen._apply = exact
    bpd = gen.bits_per_dim(Batch(target.expand(3, -1, -1, -1)))
    sigma = math.sqrt(d.first_variance.item())  # decoder scale: beta-tilde of the next step
    p = torch.special.ndtr(torch.tensor(1 / 255 / sigma)) - torch.special.ndtr(
        torch.tensor(-1 / 255 / sigma)
    )
    edge = torch.special.ndtr(torch.tensor(1 / 255 / sigma))  # pixels at -1 or +1
    inner = (target.abs() < 0.999).float()
    nll = (inner * -torch.log(p) + (1 - inner) * -torch.log(edge)).mean() / math.log(2)
    expected = d.prior_bpd(target) + nll
    torch.testing.assert_close(bpd, expected.expand(3), rtol=1e-4, atol=1e-4)


def test_bits_per_dim_of_a_trained_step_is_finite_per_image():
    gen = _tiny(num_timesteps=10, variance="learned_range", loss="hybrid")
    bpd = gen.bits_per_dim(Batch(_images(5), torch.arange(5)))
    assert bpd.shape == (5,) and torch.isfinite(bpd).all() and (bpd > 0).all()


# --------------------------------------------------------------------------- published weights


def _save_tiny_unet(path, out_channels: int = 1, image_size: int = 16):
    torch.manual_seed(0)
    net = build_unet(
        image_size=image_size,
        in_channels=1,
        out_channels=out_channels,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        norm_groups=4,
    )
    net.save_pretrained(path)
    return net


def test_diffusers_directory_loads_as_a_ddpm(tmp_path):
    net = _save_tiny_unet(tmp_path / "ddpm-tiny")
    gen = DDPM.from_pretrained(tmp_path / "ddpm-tiny", DataShape(1, 16), CPU)
    c = gen.config
    assert (c.schedule, c.variance, c.num_timesteps) == ("linear", "fixed_large", 1000)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(gen.unet.state_dict()[key], value, rtol=0, atol=0)
    # eps prediction: the generator's eps is the saved network's output at t
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([999, 10])
    eps, _ = gen._apply(x, t, gen.diffusion, None)
    torch.testing.assert_close(eps, net(x, t.float()).sample)
    assert gen.sample([0, 1], settings=DDPMSettings(steps="ddim4")).shape == (2, 1, 16, 16)
    # a pipeline folder (unet/ beside scheduler/) works too
    _save_tiny_unet(tmp_path / "pipe" / "unet")
    assert DDPM.from_pretrained(tmp_path / "pipe", DataShape(1, 16), CPU).image_size == 16


def test_pretrained_problems_are_one_line_errors(tmp_path):
    with pytest.raises(ValidationError, match="not a directory holding a diffusers config"):
        DDPMConfig(pretrained=tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as exc:
        DDPM.from_pretrained(broken, DataShape(1, 16), CPU)
    assert "\n" not in str(exc.value)
    _save_tiny_unet(tmp_path / "rgb")
    with pytest.raises(CheckpointError, match="channels"):
        DDPM.from_pretrained(tmp_path / "rgb", DataShape(3, 16), CPU)
    with pytest.raises(ValidationError, match="pretrained supplies the backbone"):
        DDPMConfig(pretrained=tmp_path / "rgb", channels=64)


PRETRAINED_SPEC = """
[benchmark]
name = "published"
dataset = "digits"
device = "cpu"

[sample]
num_samples = 20
batch_size = 20
grid_size = 4

[evaluate]
extractor = "digits"
metrics = ["fid", "is"]
bpd_images = 6

[timing]
repeats = 1
warmup = 0
batch_size = 4

[models.published]
generator = "ddpm"
config = {{ pretrained = "{path}", num_timesteps = 20 }}
sample = {{ steps = "ddim3" }}
"""


def test_spec_runs_a_pretrained_directory(cli, tmp_path):
    _save_tiny_unet(tmp_path / "weights")
    spec = tmp_path / "published.toml"
    spec.write_text(PRETRAINED_SPEC.format(path=tmp_path / "weights"))
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--train-steps", "0", "--out", str(out))
    assert result.code == 0, result.err
    (run,) = list(out.iterdir())
    metrics = json.loads((run / "published" / "metrics.json").read_text())
    assert metrics["nfe"] == 3 and metrics["config"]["pretrained"] == str(tmp_path / "weights")
    bpd = metrics["extra"]["bits_per_dim"]
    assert bpd["num_images"] == 6 and bpd["value"] > 0
    bad = tmp_path / "bad.toml"
    bad.write_text(PRETRAINED_SPEC.format(path=tmp_path / "nowhere"))
    result = cli("run", str(bad), "--out", str(tmp_path / "b"))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "models.published.config.pretrained" in result.err


# --------------------------------------------------------------------------- specs, end to end


def test_cifar10_dry_run_shows_the_improved_ddpm_setting(cli):
    result = cli("run", "cifar10", "--models", "ddpm", "--dry-run")
    assert result.code == 0, result.err
    import tomllib

    entry = tomllib.loads(result.out[result.out.index("[benchmark]") :])["models"]["ddpm"]
    c = entry["config"]
    assert (c["num_timesteps"], c["schedule"], c["variance"], c["loss"]) == (
        4000,
        "cosine",
        "learned_range",
        "hybrid",
    )
    assert (c["dropout"], c["lr"], c["num_res_blocks"]) == (0.3, 1e-4, 3)
    assert entry["train"]["batch_size"] == 128 and entry["train"]["ema_decay"] == 0.9999
    assert entry["train"]["steps"] == 500_000


@pytest.mark.gpu
def test_sampling_and_training_on_cuda_match_cpu():
    cpu = _tiny(variance="learned_range", loss="hybrid", timestep_sampler="loss_aware")
    torch.manual_seed(0)
    gpu = DDPM(cpu.config, DIGITS, torch.device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    for steps in ("ddim5", "5"):
        torch.testing.assert_close(
            gpu.sample([3, 4], settings=DDPMSettings(steps=steps)).cpu(),
            cpu.sample([3, 4], settings=DDPMSettings(steps=steps)),
            atol=1e-4,
            rtol=1e-4,
        )
    losses = fit(gpu, Batch(_images(4).cuda(), torch.arange(4).cuda()))
    assert math.isfinite(losses["loss"])
    bpd = gpu.bits_per_dim(Batch(_images(2).cuda()))
    assert bpd.device.type == "cuda" and torch.isfinite(bpd).all()


def test_registered_as_ddpm():
    assert GENERATORS.get("ddpm") is DDPM


@pytest.mark.slow
def test_smoke_ddpm_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim on the shipped smoke settings, shortened: fewer training steps
    and samples, one timed sampling call and no bits/dim pass."""
    runs = trained_and_untrained("smoke", "ddpm", 300, 300, tmp_path)
    assert runs[0]["nfe"] == 10
    assert runs[300]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_predictions_train_on_their_own_target(prediction):
    from genbench.generators.ddpm import TrainingDraws

    gen = _tiny(prediction=prediction, variance="fixed_small")
    x0, noise = _images(3), _images(3, seed=1)
    t = torch.tensor([0, 20, 49])
    draws = TrainingDraws(x0, None, t, torch.ones(3), noise)
    d = gen.diffusion
    xt = d.q_sample(x0, t, noise)
    pred, _ = gen._outputs(xt, t, d, None)
    abar = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    target = a * noise - s * x0 if prediction == "v" else x0
    torch.testing.assert_close(gen.losses(draws)["mse"], ((pred - target) ** 2).mean((1, 2, 3)))
    # Converted to eps, the exact prediction gives back the noise that made x_t.
    torch.testing.assert_close(gen.eps_of(target, xt, t, d), noise, rtol=1e-4, atol=1e-4)
