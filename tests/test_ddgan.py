"""DDGAN specifics: the schedule and posterior maths, gradient accumulation, seeded sampling."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from genbench.data.datasets import Digits
from genbench.generators import GENERATORS, Batch, DataShape
from genbench.generators.ddgan import DDGAN, DDGANConfig, VPSchedule
from genbench.generators.ddgan_nets import fir_down, fir_up
from genbench.generators.training import LRSchedule, group_slices
from tests.trainkit import trained_and_untrained, trainer

CPU = torch.device("cpu")
SHAPE = DataShape(channels=1, image_size=8, num_classes=10)  # digits at 8x8: fast tests
TINY = dict(
    num_timesteps=3,
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    nz=6,
    z_emb_dim=8,
    n_mlp=1,
    d_channels=4,
    d_channel_mult=(1, 2),
)


def _tiny(seed: int = 0, awake: bool = False, **overrides) -> DDGAN:
    """A tiny DDGAN; ``awake``: the zero-initialised layers (ends of residual branches, D's
    last convolution) get small random weights, so every parameter receives a gradient."""
    torch.manual_seed(seed)
    gen = DDGAN(DDGANConfig(**{**TINY, **overrides}), SHAPE, CPU)
    layers = [m for net in (gen.G, gen.D) for m in net.modules() if getattr(m, "zero_init", 0)]
    assert layers and all(not m.weight.any() for m in layers)
    for layer in layers if awake else []:
        torch.nn.init.normal_(layer.weight, std=0.1)
    return gen


def _batch(n: int) -> Batch:
    x, y = Digits.tensors("train")
    return Batch(torch.nn.functional.avg_pool2d(x[:n], 2), y[:n])


def _code_alpha_bar(T: int, bmin: float, bmax: float) -> torch.Tensor:
    # Xiao et al.'s code (get_time_schedule, get_sigma_schedule): t = eps + (1 - eps) k / T
    # with eps_small = 1e-3, var = 1 - exp(-bmin t - (bmax - bmin) t^2 / 2), betas = 1 -
    # alpha_bar[1:] / alpha_bar[:-1]; the cumulative product runs from t_0 = 1e-3.
    t = torch.arange(0, T + 1, dtype=torch.float64) / T
    t = t * (1 - 1e-3) + 1e-3
    alpha_bar = torch.exp(-bmin * t - 0.5 * (bmax - bmin) * t**2)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return torch.cumprod(1 - betas, dim=0)


@pytest.mark.parametrize(("T", "bmin", "bmax"), [(4, 0.1, 20.0), (1, 0.1, 20.0), (8, 0.5, 5.0)])
def test_alpha_bar_at_each_step_follows_the_official_code(T, bmin, bmax):
    sched = VPSchedule(T, bmin, bmax, CPU)
    alpha_bar = _code_alpha_bar(T, bmin, bmax)
    assert sched.alpha_bar[0] == 1.0 and sched.beta[0] == 0.0
    torch.testing.assert_close(sched.alpha_bar[1:].double(), alpha_bar, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        sched.beta[1:].double(), 1 - alpha_bar / torch.cat([torch.ones(1), alpha_bar[:-1]])
    )
    if (T, bmin, bmax) == (4, 0.1, 20.0):  # the CIFAR-10 schedule: x_T is nearly pure noise
        assert sched.alpha_bar[-1].item() == pytest.approx(math.exp(-0.0999 - 9.94999), rel=1e-5)
        # t_1 = 1e-3 + 0.999 / 4, not 1 / 4 (the paper's appendix): alpha_bar_1 differs
        paper = math.exp(-0.1 / 4 - 0.5 * 19.9 / 16)
        assert abs(sched.alpha_bar[1].item() / paper - 1) > 1e-3


def test_posterior_coefficients_match_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from q(x_t | x_{t-1}) q(x_{t-1} | x_0), precision-weighted."""
    sched = VPSchedule(4, 0.1, 20.0, CPU)
    for t in range(2, 5):
        beta, abar_prev = sched.beta[t].double(), sched.alpha_bar[t - 1].double()
        precision = (1 - beta) / beta + 1 / (1 - abar_prev)
        var = 1 / precision
        coef_xt = var * (1 - beta).sqrt() / beta
        coef_x0 = var * abar_prev.sqrt() / (1 - abar_prev)
        assert sched.posterior_var[t].item() == pytest.approx(var.item(), rel=1e-5)
        assert sched.coef_xt[t].item() == pytest.approx(coef_xt.item(), rel=1e-5)
        assert sched.coef_x0[t].item() == pytest.approx(coef_x0.item(), rel=1e-5)
    # t = 1: x_0 is given, so the posterior is a point mass at it.
    assert (sched.coef_x0[1].item(), sched.coef_xt[1].item()) == pytest.approx((1.0, 0.0))
    assert sched.posterior_var[1].item() == pytest.approx(0.0, abs=1e-12)


def test_pairs_and_posterior_samples_have_the_right_marginals():
    sched = VPSchedule(4, 0.1, 20.0, CPU)
    torch.manual_seed(0)
    n, x0 = 200_000, torch.full((200_000, 1, 1, 1), 0.7)
    for step in (1, 2, 4):
        t = torch.full((n,), step)
        x_prev, x_t = sched.q_pair(x0, t, torch.randn_like(x0), torch.randn_like(x0))
        abar = sched.alpha_bar[step].item()
        assert x_t.mean().item() == pytest.approx(0.7 * math.sqrt(abar), abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - abar, abs=0.01)
        # x_{t-1} ~ q(x_{t-1} | x_t, x_0) with x_t ~ q(x_t | x_0) is q(x_{t-1} | x_0).
        back = sched.posterior_sample(x0, x_t, t, torch.randn_like(x0))
        abar_prev = sched.alpha_bar[step - 1].item()
        assert back.mean().item() == pytest.approx(0.7 * math.sqrt(abar_prev), abs=0.01)
        assert back.var().item() == pytest.approx(1 - abar_prev, abs=0.01)
        assert x_prev.var().item() == pytest.approx(1 - abar_prev, abs=0.01)


def _params(gen: DDGAN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in gen.state_dict().items()}


def _grads(gen: DDGAN) -> dict[str, torch.Tensor]:
    """The gradients of the last update (D's from its step, G's from its own)."""
    return {
        f"{name}.{key}": p.grad.clone()
        for name, mod in gen.modules().items()
        for key, p in mod.named_parameters()
        if p.grad is not None
    }


def _updates(parts: int, steps: int, **overrides) -> list[tuple[dict, dict]]:
    """(parameters, gradients) after each of ``steps`` updates with the same random draws."""
    gen = _tiny(seed=0, awake=True, lazy_reg=2, **overrides)
    run = trainer(gen, 22, grad_accum=parts)
    batch, out = _batch(22), []  # 6 minibatch-std groups of D: 5 of 4 images, 1 of 2
    for i in range(steps):
        torch.manual_seed(11 + i)  # the same draws for every accumulation setting
        run.train_step(batch)
        out.append((_params(gen), _grads(gen)))
    return out


@pytest.mark.parametrize("parts", [2, 5])
def test_accumulated_update_equals_full_batch_update(parts):
    """k micro-batches give the same D and G as one batch of k times the size, R1 included."""
    start = _params(_tiny(seed=0, awake=True))
    full, accumulated = _updates(1, steps=2), _updates(parts, steps=2)
    # Update 1 applies R1 (lazy_reg = 2), update 2 does not.
    for (params, grads), (acc_params, acc_grads) in zip(full, accumulated, strict=True):
        changed = [k for k in params if not torch.equal(params[k], start[k])]
        assert {k[0] for k in changed} == {"D", "G"} and len(changed) > len(params) // 2
        assert grads.keys() == acc_grads.keys() and len(grads) > len(params) // 2
        for key, value in params.items():
            torch.testing.assert_close(acc_params[key], value, rtol=0, atol=1e-5, msg=key)
        for key, value in grads.items():
            # float32 sums of O(1) terms in another order: an element near zero keeps an
            # absolute error of the terms' scale, so the tolerance follows the tensor's scale
            scale = float(value.abs().max())
            torch.testing.assert_close(
                acc_grads[key], value, rtol=1e-4, atol=1e-6 + 1e-5 * scale, msg=key
            )


def test_r1_step_adds_exactly_the_penalty_gradient():
    """D's gradient with R1 minus without is grad of gamma/2 E||grad_x D(x_{t-1}, x_t)||^2."""
    gamma = 1.0
    ((_, with_r1),) = _updates(1, steps=1, r1_gamma=gamma)
    ((_, without),) = _updates(1, steps=1, r1_gamma=0.0)
    gen, batch = _tiny(seed=0, awake=True, lazy_reg=2, r1_gamma=gamma), _batch(22)
    torch.manual_seed(11)
    gen._draw(batch)  # the D phase draws first, then R1 its own real pairs
    draws = gen._draw_real(batch)
    x_prev, x_t = gen.schedule.q_pair(draws.real, draws.t, draws.noise_prev, draws.noise_step)
    x_prev.requires_grad_(True)
    logits = gen.D(x_prev, x_t, draws.t)
    (grad_x,) = torch.autograd.grad(logits.sum(), x_prev, create_graph=True)
    penalty = 0.5 * gamma * grad_x.flatten(1).square().sum(1).mean()
    params = dict(gen.D.named_parameters())
    grads = torch.autograd.grad(penalty, list(params.values()), allow_unused=True)
    # Parameters the penalty never reaches (the head's bias) get a zero gradient.
    flat = [
        (torch.zeros_like(p) if g is None else g).flatten()
        for g, p in zip(grads, params.values(), strict=True)
    ]
    expected = torch.cat(flat)
    diff = torch.cat([(with_r1[f"D.{k}"] - without[f"D.{k}"]).flatten() for k in params])
    assert expected.norm() > 1e-3
    assert (diff - expected).norm() < 1e-3 * expected.norm()


def test_lazy_r1_joins_the_d_update_every_lazy_reg_steps():
    gen = _tiny(lazy_reg=2)
    phases = gen.training().phases
    assert [(p.name, p.optimizer, p.interval) for p in phases] == [
        ("D", "D", 1),
        ("R1", "D", 2),
        ("G", "G", 1),
    ]
    run = trainer(gen, 9, grad_accum=3)
    logs = []
    for _ in range(3):
        run.train_step(_batch(9))
        logs.append(run.read_logs())
    assert ["r1" in log for log in logs] == [True, False, True]
    assert all({"loss_d", "loss_g", "grad_norm_D", "grad_norm_G"} <= log.keys() for log in logs)
    with pytest.raises(ValueError, match=r"cannot be cut into 3 micro-batches .* groups of 4"):
        trainer(gen, 8, grad_accum=3)  # two groups of 4 cannot make three micro-batches


@pytest.mark.parametrize(
    ("n", "parts", "group", "sizes"),
    [(22, 2, 4, [12, 10]), (22, 5, 4, [8, 4, 4, 4, 2]), (12, 5, 1, [3, 3, 2, 2, 2])],
)
def test_micro_batches_are_made_of_whole_stddev_groups(n, parts, group, sizes):
    slices = group_slices(n, parts, group)
    assert [s.stop - s.start for s in slices] == sizes
    assert slices[0].start == 0 and slices[-1].stop == n
    assert all(s.start % group == 0 for s in slices)


def test_discriminator_couples_only_samples_of_one_stddev_group():
    gen = _tiny(awake=True)
    x, t = _batch(10).images, torch.full((10,), 2)
    base = gen.D(x, x, t)
    moved = x.clone()
    moved[5] += 1.0  # groups of 4: [0-3], [4-7], [8-9]
    out = gen.D(moved, x, t)
    assert torch.equal(out[:4], base[:4]) and torch.equal(out[8:], base[8:])
    assert (out[4:8] - base[4:8]).abs().min() > 0  # the whole group sees the change


def test_sampling_is_independent_of_batch_size():
    gen = _tiny()
    trainer(gen, 8).train_step(_batch(8))
    seeds = list(range(100, 116))
    together = gen.sample(seeds)
    alone = torch.cat([gen.sample([s]) for s in seeds])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    assert together.std(dim=0).mean() > 1e-3


def test_sampling_makes_t_generator_calls_from_noise():
    gen = _tiny(num_timesteps=3)
    times: list[list[int]] = []
    hook = gen.G.register_forward_hook(lambda mod, args, out: times.append(args[2].tolist()))
    images = gen.sample([1, 2])
    hook.remove()
    assert times == [[3, 3], [2, 2], [1, 1]] and gen.nfe() == 3
    assert images.shape == (2, 1, 8, 8)
    # The T steps are fixed by training: DDGAN has no sampling settings at all.
    assert not DDGAN.Settings.model_fields
    with pytest.raises(ValidationError, match="steps"):
        DDGAN.make_settings(gen.config, SHAPE, {"steps": 3})


def test_latent_modulates_the_generator_norms():
    gen = _tiny(awake=True)
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([2, 2])
    z = torch.randn(2, 6)
    same_x = x_t[:1].expand(2, -1, -1, -1)
    out = gen.G(same_x, z, t)
    assert (out[0] - out[1]).abs().max() > 1e-3, "z must change G's output"
    torch.testing.assert_close(gen.G(same_x, z[:1].expand(2, -1), t)[1], out[0])


def test_cifar10_defaults_are_the_published_settings():
    c = DDGANConfig()
    assert (c.num_timesteps, c.beta_min, c.beta_max) == (4, 0.1, 20.0)
    assert (c.channels, c.channel_mult, c.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert (c.nz, c.z_emb_dim, c.n_mlp) == (100, 256, 4)
    assert (c.r1_gamma, c.lazy_reg, c.lr_d, c.lr_g) == (0.02, 15, 1.25e-4, 1.6e-4)
    meta = torch.device("meta")
    with meta:  # shapes and counts only: skip initialising 60M parameters
        gen = GENERATORS.get("ddgan")(c, DataShape(3, 32), meta)
    opts = gen.training().optimizers
    assert (opts["D"].lr, opts["G"].lr) == (1.25e-4, 1.6e-4)
    # Cosine decay to 1e-5 over the run and random flips, as the official CIFAR-10 recipe.
    assert {o.schedule for o in opts.values()} == {LRSchedule(decay="cosine", floor=1e-5)}
    assert c.hflip
    assert gen.sampling_modules() == ["G"]
    assert 30e6 < gen.num_parameters() < 60e6  # official G: ~48M; ours: 47.5M
    x, t = torch.zeros(2, 3, 32, 32, device=meta), torch.tensor([4, 1], device=meta)
    assert gen.G(x, torch.zeros(2, 100, device=meta), t).shape == x.shape
    assert gen.D(x, x, t).shape == (2,)


def test_cifar10_dry_run_shows_the_published_settings(cli):
    import tomllib

    result = cli("run", "cifar10", "--models", "ddgan", "--dry-run")
    assert result.code == 0, result.err
    entry = tomllib.loads(result.out[result.out.index("[benchmark]") :])["models"]["ddgan"]
    c = entry["config"]
    assert (c["num_timesteps"], c["channels"], c["channel_mult"]) == (4, 128, [1, 2, 2, 2])
    assert (c["num_res_blocks"], c["nz"], c["z_emb_dim"], c["n_mlp"]) == (2, 100, 256, 4)
    assert (c["r1_gamma"], c["lazy_reg"], c["lr_d"], c["lr_g"]) == (0.02, 15, 1.25e-4, 1.6e-4)
    assert entry["train"]["batch_size"] == 256 and entry["train"]["ema_decay"] == 0.9999
    assert "steps" not in entry["sample"]  # T is the config's; sampling has no settings


def test_bad_layouts_are_rejected():
    with pytest.raises(ValidationError, match="groups"):
        DDGANConfig(channels=18, channel_mult=(1,))  # 18 / 4 groups
    with pytest.raises(ValidationError, match="grad_accum"):
        DDGANConfig(grad_accum=2)  # accumulation is the harness's: [train] grad_accum
    with pytest.raises(ValueError, match="attn_resolutions"):
        DDGAN(DDGANConfig(**{**TINY, "attn_resolutions": (2,)}), SHAPE, CPU)


@pytest.mark.slow
def test_smoke_ddgan_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim on the shipped smoke settings, shortened (250 steps, 300 samples)."""
    runs = trained_and_untrained("smoke", "ddgan", 250, 300, tmp_path)
    for m in runs.values():
        assert m["nfe"] == 4 and m["sample"]["steps"] is None  # T, fixed
    assert runs[250]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]


# --------------------------------------------------------------------------- FIR and pyramid


def _fir_1d(x: torch.Tensor, up: bool) -> torch.Tensor:
    """The official [1, 3, 3, 1] resampling of one row, written out (zeros off the ends)."""
    n = x.shape[0]

    def at(i: int) -> float:
        return float(x[i]) if 0 <= i < n else 0.0

    if up:
        pairs = [((at(i - 1) + 3 * at(i)) / 4, (3 * at(i) + at(i + 1)) / 4) for i in range(n)]
        return torch.tensor([v for pair in pairs for v in pair])
    return torch.tensor(
        [
            (at(2 * i - 1) + 3 * at(2 * i) + 3 * at(2 * i + 1) + at(2 * i + 2)) / 8
            for i in range(n // 2)
        ]
    )


def test_fir_resampling_is_the_separable_binomial_filter():
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randn(8, generator=g), torch.randn(8, generator=g)
    image = torch.outer(rows, cols)[None, None]  # separable: the 2-D filter acts per axis
    for fn, up in ((fir_down, False), (fir_up, True)):
        expected = torch.outer(_fir_1d(rows, up), _fir_1d(cols, up))
        torch.testing.assert_close(fn(image)[0, 0], expected)
    assert fir_down(torch.ones(1, 2, 8, 8))[0, :, 1:3, 1:3].eq(1).all()  # unit gain inside
    assert fir_up(torch.ones(1, 2, 8, 8))[0, :, 1:15, 1:15].eq(1).all()


def test_input_pyramid_adds_the_downsampled_input_after_each_down_block():
    gen = _tiny(awake=True)
    G = gen.G
    assert len(G.pyramid) == sum(s.block.resample_kind == "down" for s in G.down) > 0
    seen: dict[str, torch.Tensor] = {}
    down_at = next(i for i, s in enumerate(G.down) if s.block.resample_kind == "down")
    G.down[down_at].register_forward_hook(lambda m, i, o: seen.__setitem__("block", o))
    G.pyramid[0].register_forward_hook(lambda m, i, o: seen.__setitem__("pyramid", o))
    G.down[down_at + 1].register_forward_pre_hook(lambda m, i: seen.__setitem__("next", i[0]))
    x_t = torch.randn(2, 1, 8, 8)
    G(x_t, torch.randn(2, gen.config.nz), torch.tensor([1, 2]))
    torch.testing.assert_close(seen["next"], (seen["block"] + seen["pyramid"]) / math.sqrt(2))
    plain = _tiny(progressive_input="none", fir=False)
    assert len(plain.G.pyramid) == 0 and plain.G.down[down_at].block.resample is not fir_down
