"""VDPM specifics: log-SNR schedules, output conversions, loss weightings, samplers,
classifier-free guidance, gradient accumulation, and the shipped smoke / CIFAR-10 settings."""

from __future__ import annotations

import math
import tomllib

import pytest
import torch
from pydantic import ValidationError

from genbench.generators import Batch, DataShape
from genbench.generators.unet import ResampleThenAttend
from genbench.generators.vdpm import (
    LOGSNR_SCHEDULES,
    MSE_WEIGHTS,
    OUTPUT_FROM_X0_EPS,
    OUTPUT_TO_X0_EPS,
    VDPM,
    TrainingDraws,
    VDPMConfig,
    VDPMSettings,
    ancestral_step,
    diffuse,
    eps_from_v,
    eps_from_x0,
    kl_weight_continuous,
    kl_weight_discrete,
    logsnr_schedule,
    sample_loop,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from tests.trainkit import fit, trained_and_untrained, wake

SHAPE = DataShape(channels=1, image_size=8, num_classes=10)
TINY = dict(
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    dropout=0.0,
    norm_groups=4,
    warmup_steps=0,
    sample_steps=4,
    hflip=False,
)
OUTPUT_TYPES = sorted(OUTPUT_TO_X0_EPS)


def _tiny(seed: int = 0, **overrides) -> VDPM:
    torch.manual_seed(seed)
    return VDPM(VDPMConfig(**{**TINY, **overrides}), SHAPE, torch.device("cpu"))


def _data(n: int, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x_0 in [-1, 1] and standard normal noise, shape (n, 1, 8, 8)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 8, 8, generator=g, dtype=dtype) * 2 - 1
    return x0, torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)


LOGSNRS = torch.linspace(-20.0, 20.0, 81, dtype=torch.float64)  # one per sample


# --------------------------------------------------------------------------- conversions


def test_conversions_round_trip_in_float64_across_the_whole_logsnr_range():
    x0, eps = _data(len(LOGSNRS))
    z = diffuse(x0, eps, LOGSNRS)
    v = v_from_x0_eps(x0, eps, LOGSNRS)
    close = dict(atol=1e-6, rtol=0)
    torch.testing.assert_close(x0_from_v(z, v, LOGSNRS), x0, **close)
    torch.testing.assert_close(eps_from_v(z, v, LOGSNRS), eps, **close)
    torch.testing.assert_close(x0_from_eps(z, eps, LOGSNRS), x0, **close)
    torch.testing.assert_close(eps_from_x0(z, x0, LOGSNRS), eps, **close)
    # v = alpha eps - sigma x, with alpha^2 = sigmoid(lambda) (Salimans & Ho, section 4)
    alpha = torch.sigmoid(LOGSNRS).sqrt().view(-1, 1, 1, 1)
    sigma = torch.sigmoid(-LOGSNRS).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(v, alpha * eps - sigma * x0, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", OUTPUT_TYPES)
def test_every_output_type_maps_back_to_x0_and_eps(kind):
    x0, eps = _data(len(LOGSNRS), seed=1)
    z = diffuse(x0, eps, LOGSNRS)
    out = OUTPUT_FROM_X0_EPS[kind](x0, eps, LOGSNRS)
    x_pred, eps_pred = OUTPUT_TO_X0_EPS[kind](z, out, LOGSNRS)
    torch.testing.assert_close(x_pred, x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(eps_pred, eps, atol=1e-6, rtol=0)


def test_v_conversions_hold_1e_5_in_float32_over_the_whole_range():
    """The v <-> (x_0, eps) maps divide by nothing, so float32 keeps them accurate at
    +-20; the x_0 <-> eps maps divide by alpha or sigma (float64 above)."""
    x0, eps = _data(len(LOGSNRS), dtype=torch.float32, seed=2)
    z = diffuse(x0, eps, LOGSNRS)
    v = v_from_x0_eps(x0, eps, LOGSNRS)
    torch.testing.assert_close(x0_from_v(z, v, LOGSNRS), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_from_v(z, v, LOGSNRS), eps, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", sorted(LOGSNR_SCHEDULES))
@pytest.mark.parametrize(("lmin", "lmax"), [(-20.0, 20.0), (-7.5, 13.0)])
def test_schedule_hits_its_bounds_and_decreases(name, lmin, lmax):
    fn = logsnr_schedule(name, lmin, lmax)
    t = torch.linspace(0.0, 1.0, 20_001, dtype=torch.float64)
    lam = fn(t)
    assert lam.dtype == torch.float64 and torch.isfinite(lam).all()
    assert lam[0].item() == pytest.approx(lmax, abs=1e-6)
    # legacy is DDPM's own alpha-bar, lambda(1) = -10.118, clamped into the bounds
    end = max(lmin, -10.1176) if name == "legacy" else lmin
    assert lam[-1].item() == pytest.approx(end, abs=1e-3 if name == "legacy" else 1e-6)
    inside = (lam > lmin) & (lam < lmax)
    assert inside[1:].sum() > 10_000
    assert (lam[1:] <= lam[:-1]).all(), "log-SNR must not rise with t"
    falling = lam[1:] < lam[:-1]
    assert falling[inside[1:] & inside[:-1]].all(), "log-SNR must fall strictly inside its bounds"


def test_schedule_shapes():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    # sigmoid: lambda linear in t (VDM's linear gamma)
    assert logsnr_schedule("sigmoid", -20, 20)(t).tolist() == pytest.approx([10.0, 0.0])
    # linear: alpha^2 linear in t, so at t = 1/2 it is the mean of its end values
    a2 = torch.sigmoid(logsnr_schedule("linear", -4, 6)(t[1:]))
    expected = (1 / (1 + math.exp(4.0)) + 1 / (1 + math.exp(-6.0))) / 2
    assert a2.item() == pytest.approx(expected, abs=1e-12)
    # cosine: lambda = -2 log tan(a t + b); symmetric bounds give a t + b = pi / 4 at t = 1/2
    cosine = logsnr_schedule("cosine", -20, 20)(t).tolist()
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    assert cosine == pytest.approx([-2 * math.log(math.tan(a / 4 + b)), 0.0], abs=1e-9)


def test_legacy_schedule_is_ddpm_alpha_bar():
    """alpha^2(t) = sigmoid(lambda(t)) is DDPM's alpha-bar at step t T, not a stretched copy."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # Ho et al. section 4
    abar = torch.log1p(-betas).cumsum(0).exp()
    k = torch.tensor([100, 250, 500, 750, 900, 1000])
    lam = logsnr_schedule("legacy", -20.0, 20.0)(k.double() / 1000)
    alpha2 = torch.sigmoid(lam)
    assert float(alpha2[2]) == pytest.approx(0.0786, abs=1e-3)
    torch.testing.assert_close(alpha2, abar[k - 1], rtol=2e-2, atol=0)
    assert float(lam[-1]) == pytest.approx(-10.118, abs=1e-3)
    # the bounds only clamp
    assert float(logsnr_schedule("legacy", -5.0, 20.0)(torch.ones(1))) == -5.0


def test_config_rejects_inverted_bounds_and_unknown_choices():
    with pytest.raises(ValidationError, match="logsnr_min"):
        VDPMConfig(logsnr_min=5.0, logsnr_max=-5.0)
    with pytest.raises(ValidationError):
        VDPMConfig(logsnr_schedule="quadratic")
    with pytest.raises(ValidationError):
        VDPMConfig(model_out_type="score")


# --------------------------------------------------------------------------- losses


def test_truncated_snr_weight_is_max_of_snr_and_one():
    snr = LOGSNRS.exp()
    torch.testing.assert_close(MSE_WEIGHTS["truncated_snr"](LOGSNRS), snr.clamp(min=1.0))
    assert MSE_WEIGHTS["truncated_snr"](torch.tensor([-3.0, 0.0, 3.0])).tolist() == pytest.approx(
        [1.0, 1.0, math.exp(3.0)]
    )


def _oracle_loss(kind: str, reweight: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's per-sample loss for a fixed fake network output, and the x/eps/v
    squared errors computed directly."""
    gen = _tiny(model_out_type=kind, reweight_type=reweight)
    n = 9
    x0, eps = _data(n, seed=3)
    t = torch.linspace(0.02, 0.98, n, dtype=torch.float64)
    logsnr = gen.schedule(t)
    out = OUTPUT_FROM_X0_EPS[kind](*_data(n, seed=4), logsnr)  # some wrong prediction
    gen._net_output = lambda z, lam, labels, net=None: out
    loss = gen.losses(TrainingDraws(x0, t, eps, None))
    z = diffuse(x0, eps, logsnr)
    x_pred, eps_pred = OUTPUT_TO_X0_EPS[kind](z, out, logsnr)
    v_pred = v_from_x0_eps(x_pred, eps_pred, logsnr)
    v = v_from_x0_eps(x0, eps, logsnr)

    def mse(a, b):
        return (a - b).pow(2).flatten(1).mean(1)

    return loss, {"x": mse(x_pred, x0), "eps": mse(eps_pred, eps), "v": mse(v_pred, v)}


@pytest.mark.parametrize("kind", OUTPUT_TYPES)
def test_each_weighting_is_the_mse_of_its_target(kind):
    loss, err = _oracle_loss(kind, "constant")
    torch.testing.assert_close(loss, err["x"], rtol=1e-6, atol=1e-9)
    loss, err = _oracle_loss(kind, "snr")
    torch.testing.assert_close(loss, err["eps"], rtol=1e-6, atol=1e-9)
    loss, err = _oracle_loss(kind, "truncated_snr")
    torch.testing.assert_close(loss, torch.maximum(err["x"], err["eps"]), rtol=1e-6, atol=1e-9)
    loss, err = _oracle_loss(kind, "alpha2")
    torch.testing.assert_close(loss, err["v"], rtol=1e-6, atol=1e-9)


def test_kl_weights_continuous_and_discrete_agree():
    """VDM eq. 17's -1/2 SNR'(t) is the T -> infinity limit of eq. 13's T/2 (SNR(s) - SNR(t))."""
    fn = logsnr_schedule("cosine", -20.0, 20.0)
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    cont = kl_weight_continuous(fn, t)
    h = 1e-6
    finite = -0.5 * (fn(t + h).exp() - fn(t - h).exp()) / (2 * h)
    torch.testing.assert_close(cont, finite, rtol=1e-6, atol=0)
    torch.testing.assert_close(kl_weight_discrete(fn, t, 100_000), cont, rtol=1e-3, atol=0)
    assert (cont > 0).all()


@pytest.mark.parametrize("timesteps", [0, 10])
def test_kl_loss_trains(timesteps):
    gen = _tiny(loss_type="kl", train_timesteps=timesteps)
    x0, _ = _data(8, dtype=torch.float32)
    losses = fit(gen, Batch(x0, torch.arange(8)))
    assert math.isfinite(losses["loss"]) and losses["loss"] > 0


def test_discrete_training_times_lie_on_the_grid():
    gen = _tiny(train_timesteps=10)
    t = gen._draw_time(1000)
    grid = (t * 10).round()
    torch.testing.assert_close(t * 10, grid)
    assert grid.min() >= 1 and grid.max() <= 10 and len(grid.unique()) == 10


# --------------------------------------------------------------------------- samplers


def _oracle(gen: VDPM, x0: torch.Tensor, eps: torch.Tensor) -> None:
    """Make ``gen``'s network the perfect model of (x0, eps): it outputs its target type."""
    kind = gen.config.model_out_type
    gen._net_output = lambda z, lam, labels: OUTPUT_FROM_X0_EPS[kind](x0, eps, lam)


@pytest.mark.parametrize("kind", OUTPUT_TYPES)
@pytest.mark.parametrize("steps", [1, 16])
def test_ddim_with_true_noise_recovers_x0_for_a_perfect_model(kind, steps):
    gen = _tiny(model_out_type=kind)
    x0, eps = _data(4, seed=5)
    _oracle(gen, x0, eps)
    grid = gen.logsnr_grid(steps)
    z1 = diffuse(x0, eps, grid[0])  # z_1 made with the true noise
    out = sample_loop(gen._denoiser(None, 0.0), z1, grid, gen._step_fn(), lambda i: 1 / 0)
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


def test_ancestral_step_is_the_ddpm_posterior():
    """Mean and variances against Ho et al. eq. 7 with alpha-bar = sigmoid(lambda)."""
    lt, ls = torch.tensor(-1.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    abar_t, abar_s = torch.sigmoid(lt), torch.sigmoid(ls)
    beta = 1 - abar_t / abar_s
    z, x0 = (torch.full((1,), v, dtype=torch.float64) for v in (0.7, -0.3))
    mean = (abar_s.sqrt() * beta * x0 + (abar_t / abar_s).sqrt() * (1 - abar_s) * z) / (1 - abar_t)
    small = (1 - abar_s) / (1 - abar_t) * beta
    for frac, var in [(0.0, small), (1.0, beta), (0.3, small**0.7 * beta**0.3)]:

        def step(noise, frac=frac):
            return ancestral_step(z, x0, None, lt, ls, lambda: noise, intp_frac=frac)

        zero, one = (
            step(torch.zeros(1, dtype=torch.float64)),
            step(torch.ones(1, dtype=torch.float64)),
        )
        torch.testing.assert_close(zero, mean, atol=1e-12, rtol=0)
        torch.testing.assert_close((one - zero) ** 2, var.view(1), atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("var", ["fixed_small", "fixed_large", "fixed_medium"])
def test_ancestral_sampling_uses_only_the_seed(var):
    gen = _tiny(sampler="ancestral", model_var_type=var)
    five = VDPMSettings(steps=5)
    many = gen.sample([3, 8, 5], torch.tensor([3, 8, 5]), five)
    torch.manual_seed(7)
    one = gen.sample([8], torch.tensor([8]), five)
    torch.testing.assert_close(many[1:2], one, atol=1e-5, rtol=1e-5)
    assert many.abs().max() <= 1.0


def test_sample_steps_are_checked_and_counted():
    gen = _tiny()
    assert gen.nfe() == 4 and gen.nfe(VDPMSettings(steps=7)) == 7
    for bad in ("fast", 0, 65_536):
        with pytest.raises(ValidationError, match="steps"):
            VDPM.make_settings(gen.config, SHAPE, {"steps": bad})


# --------------------------------------------------------------------------- guidance


def test_guidance_mixes_the_clipped_x0_of_each_branch():
    """As v-diffusion-torch: each branch's x_pred is clipped, then mixed (s = 1 + w) and not
    clipped again; eps follows from the mix. Mixing before clipping gives other images."""
    gen = wake(_tiny(seed=3), scale=0.5)
    gen.eval()
    z = torch.randn(6, 1, 8, 8) * 3
    lam = torch.tensor(-1.0, dtype=torch.float64)
    labels = torch.arange(6) % 10
    with torch.no_grad():
        convert = OUTPUT_TO_X0_EPS[gen.config.model_out_type]
        cond = convert(z, gen._net_output(z, lam, labels), lam)[0]
        uncond = convert(z, gen._net_output(z, lam, torch.full_like(labels, 10)), lam)[0]
        assert cond.abs().max() > 1 and not torch.allclose(cond, uncond)
        x1, _ = gen._denoiser(labels, 1.0)(z, lam)
        torch.testing.assert_close(x1, cond.clamp(-1, 1))
        x3, eps3 = gen._denoiser(labels, 3.0)(z, lam)
        expected = 3.0 * cond.clamp(-1, 1) - 2.0 * uncond.clamp(-1, 1)
        # (the guided call batches both branches: float32 rounding differs slightly)
        torch.testing.assert_close(x3, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(eps3, eps_from_x0(z, x3, lam))
        assert expected.abs().max() > 1  # the mix is not clipped again
        assert (x3 - (3.0 * cond - 2.0 * uncond).clamp(-1, 1)).abs().max() > 0.1


def test_network_starts_at_zero_with_attention_after_resampling():
    """init_scale = 0: the output is zero at initialisation; attention levels also attend
    after their resampling blocks (v-diffusion-torch's UNet)."""
    gen = _tiny(attn_resolutions=(8, 4))
    out = gen._net_output(torch.randn(2, 1, 8, 8), torch.tensor(0.0), torch.tensor([1, 10]))
    assert out.abs().max() == 0
    wrapped = [m for m in gen.net.modules() if isinstance(m, ResampleThenAttend)]
    assert len(wrapped) == 2  # the 8 -> 4 down block and the 4 -> 8 up block
    plain = _tiny(attn_resolutions=(8, 4), zero_init=False, attn_after_resample=False)
    x = torch.randn(2, 1, 8, 8)
    assert plain._net_output(x, torch.tensor(0.0), torch.tensor([1, 10])).abs().max() > 0
    assert not any(isinstance(m, ResampleThenAttend) for m in plain.net.modules())


def test_guidance_doubles_network_evaluations():
    gen = _tiny(guidance=2.5)
    rows = []
    gen.net.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    labels = torch.tensor([1, 2, 3])
    five = VDPMSettings(steps=5)
    gen.sample([1, 2, 3], labels, five)
    assert rows == [6] * 5 and gen.nfe(five) == 10  # the config's guidance scale
    rows.clear()
    conditional = VDPMSettings(steps=5, guidance=1.0)
    gen.sample([1, 2, 3], labels, conditional)
    assert rows == [3] * 5 and gen.nfe(conditional) == 5
    rows.clear()
    gen.sample([1, 2, 3], None, five)  # no label: nothing to guide towards
    assert rows == [3] * 5
    uncond = _tiny(class_conditional=False)
    assert uncond.nfe(conditional) == 5
    with pytest.raises(ValueError, match="class-conditional"):
        VDPM.make_settings(uncond.config, SHAPE, {"guidance": 2.0})


def test_label_dropout_and_flip_rates():
    gen = _tiny(p_uncond=0.25, hflip=True)
    torch.manual_seed(0)
    x = torch.zeros(4000, 1, 8, 8)
    x[..., 0] = 1.0  # left column lit: a flip moves it to the right
    draws = gen.draw(Batch(x, torch.zeros(4000, dtype=torch.long)))
    null = (draws.labels == SHAPE.num_classes).double().mean().item()
    assert null == pytest.approx(0.25, abs=0.03)
    assert set(draws.labels.unique().tolist()) == {0, SHAPE.num_classes}
    flipped = draws.x0[:, 0, 0, -1] == 1.0
    assert flipped.double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert (draws.x0.sum((1, 2, 3)) == 8).all()
    assert not _tiny(hflip=False).draw(Batch(x[:100])).x0[:, 0, 0, -1].any()


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("kind", ["v", "both"])
def test_gradient_accumulation_matches_one_big_batch(kind):
    torch.set_default_dtype(torch.float64)  # so only the accumulation order differs
    try:
        one = _tiny(seed=0, model_out_type=kind, grad_clip=0.5, weight_decay=0.01)
        acc = _tiny(seed=1, model_out_type=kind, grad_clip=0.5, weight_decay=0.01)
        acc.load_state_dict(one.state_dict())
        x0, _ = _data(16, seed=6)
        batch = Batch(x0, torch.arange(16) % 10)
        before = {k: v.clone() for k, v in one.state_dict().items()}
        calls: list[int] = []
        acc.net.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
        for gen, parts in ((one, 1), (acc, 4)):
            torch.manual_seed(42)
            fit(gen, batch, grad_accum=parts)
    finally:
        torch.set_default_dtype(torch.float32)
    assert calls == [4, 4, 4, 4]
    after_one, after_acc = one.state_dict(), acc.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after_one[k])]
    assert len(moved) > 10
    for key in after_one:
        torch.testing.assert_close(after_acc[key], after_one[key], atol=1e-9, rtol=1e-7)


# --------------------------------------------------------------------------- specs


def test_defaults_are_the_published_cifar10_setting():
    c = VDPMConfig()
    assert (c.channels, c.channel_mult, c.num_res_blocks) == (256, (1, 1, 1), 3)
    assert (c.attn_resolutions, c.dropout) == ((16, 8), 0.2)
    assert (c.logsnr_schedule, c.logsnr_min, c.logsnr_max) == ("cosine", -20.0, 20.0)
    assert (c.model_out_type, c.reweight_type, c.train_timesteps) == ("v", "truncated_snr", 0)
    assert (c.p_uncond, c.guidance, c.lr) == (0.1, 1.0, 2e-4)  # w = 0 is the scale s = 1


def test_cifar10_dry_run_shows_the_published_settings(cli):
    result = cli("run", "cifar10", "--models", "vdpm", "--dry-run")
    assert result.code == 0, result.err
    spec = tomllib.loads(result.out)
    (model,) = spec["models"].values()
    cfg = model["config"]
    assert model["generator"] == "vdpm"
    assert (cfg["channels"], cfg["channel_mult"], cfg["num_res_blocks"]) == (256, [1, 1, 1], 3)
    assert (cfg["attn_resolutions"], cfg["dropout"]) == ([16, 8], 0.2)
    assert (cfg["model_out_type"], cfg["logsnr_schedule"], cfg["lr"]) == ("v", "cosine", 2e-4)
    assert (cfg["p_uncond"], cfg["class_conditional"]) == (0.1, True)
    assert model["train"]["batch_size"] == 128 and model["train"]["ema_decay"] == 0.9999
    assert model["sample"]["steps"] == 1024


@pytest.mark.slow
def test_smoke_vdpm_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim on the shipped smoke model (fewer steps and samples)."""
    runs = trained_and_untrained("smoke", "vdpm", 100, 300, tmp_path)
    assert runs[100]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]
