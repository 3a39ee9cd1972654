"""OpenAI's improved-/guided-diffusion checkpoints in DDPM (issue 23), against their own code.

``guided_diffusion`` (PyPI ``guided-diffusion-sdk``, a dev extra) builds the reference
networks and diffusions with random weights; the tests convert its state dicts and compare
outputs, sampling loops, the diffusion's maths and bits/dim.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from genbench.benchmarks.checkpoints import load_checkpoint
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.core.errors import CheckpointError
from genbench.core.noise import seeded_randn
from genbench.generators.base import Batch, DataShape
from genbench.generators.ddpm import BACKBONE_FIELDS, DDPM, DDPMConfig, DDPMSettings, TrainingDraws
from genbench.generators.openai_checkpoint import config_from_openai_flags

script_util = pytest.importorskip("guided_diffusion.script_util")  # the dev extra

#: improved-diffusion's CIFAR-10 model (Nichol & Dhariwal 2021; its README's flags).
IDDPM_CIFAR10 = dict(
    image_size=32,
    num_channels=128,
    num_res_blocks=3,
    channel_mult="1,2,2,2",
    num_heads=4,
    attention_resolutions="16,8",
    dropout=0.3,
    learn_sigma=True,
    diffusion_steps=4000,
    noise_schedule="cosine",
    use_scale_shift_norm=True,
    rescale_timesteps=True,
    rescale_learned_sigmas=True,
)
#: guided-diffusion's class-conditional ImageNet 64x64 model (its README's flags).
ADM_IMAGENET64 = dict(
    attention_resolutions="32,16,8",
    class_cond=True,
    diffusion_steps=1000,
    dropout=0.1,
    image_size=64,
    learn_sigma=True,
    noise_schedule="cosine",
    num_channels=192,
    num_head_channels=64,
    num_res_blocks=3,
    resblock_updown=True,
    use_new_attention_order=True,
    use_fp16=True,
    use_scale_shift_norm=True,
)
#: A small network with the CIFAR-10 model's features, for loops over many steps.
SMALL = dict(
    IDDPM_CIFAR10,
    image_size=16,
    num_channels=32,
    channel_mult="1,2",
    num_res_blocks=1,
    attention_resolutions="8",
    num_heads=2,
)


def _theirs(flags: dict, seed: int = 0):
    """Their model (eval mode; the layers they start at zero made random) and diffusion."""
    args = script_util.model_and_diffusion_defaults()
    args.update(flags, use_fp16=False)  # fp16 changes their forward pass, not the weights
    torch.manual_seed(seed)
    model, diffusion = script_util.create_model_and_diffusion(**args)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # zero_module: a zero output would make every comparison trivial
                p.normal_(0.0, 0.02)
    return model.eval(), diffusion


def _ours(flags: dict, num_classes: int = 0, **extra) -> DDPM:
    config = DDPMConfig(**{**config_from_openai_flags(flags), **extra})
    data = DataShape(3, config.image_size, num_classes)
    return DDPM(config, data, torch.device("cpu"))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- the network


def test_improved_ddpm_cifar10_checkpoint_loads_and_outputs_equal_theirs(tmp_path):
    """Item 2: a state dict saved from their CIFAR-10 network, read as ``--checkpoint``
    reads it, gives their output to 1e-5 on the same input (eps and variance channels)."""
    model, _ = _theirs(IDDPM_CIFAR10)
    path = tmp_path / "ema_0.9999_500000.pt"
    torch.save(model.state_dict(), path)
    ours = _ours(IDDPM_CIFAR10)
    load_checkpoint(ours, path, "ddpm")
    assert _count(ours.unet) == _count(model) == 52_546_438
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 3999])
    ours.unet.eval()
    with torch.no_grad():
        theirs_out = model(x, t.float() * 1000 / 4000)  # their rescale_timesteps
        eps, v = ours._apply(x, t, ours.diffusion, None)
    torch.testing.assert_close(eps, theirs_out[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v * 2 - 1, theirs_out[:, 3:], rtol=1e-5, atol=1e-5)


def test_guided_diffusion_imagenet64_conditional_outputs_equal_theirs():
    """Item 2: the ImageNet 64x64 class-conditional setting (residual resampling, 64-channel
    heads, the new q/k/v order, 1000 classes without a null class): equal outputs."""
    model, _ = _theirs(ADM_IMAGENET64)
    ours = _ours(ADM_IMAGENET64, num_classes=1000)
    ours.load_state_dict(ours.import_state(model.state_dict()))
    assert _count(ours.unet) == _count(model)
    ours.unet.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([417]), torch.tensor([981])
    with torch.no_grad():
        expected = model(x, t, y=y)
        got = ours.unet(x, t.float(), class_labels=y, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().max() > 0.5  # not a trivially small output


def test_attention_head_orders_are_not_interchangeable():
    """The q/k/v packing matters: the legacy order read as the new one changes the output
    (so the equality tests above check the order, not just the names)."""
    flags = dict(SMALL, use_new_attention_order=True)
    model, _ = _theirs(flags)
    wrong = _ours(flags, attention_order="legacy")
    wrong.load_state_dict(wrong.import_state(model.state_dict()))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        gap = (wrong.unet.eval()(x, t.float() / 4, return_dict=False)[0] - model(x, t / 4)).abs()
    assert gap.max() > 1e-3


def test_cifar10_spec_is_improved_diffusions_network():
    """Item 1 and acceptance: cifar10.toml's DDPM has the backbone their CIFAR-10 flags give
    (so their checkpoints load with it) and exactly their parameter count."""
    resolved = resolve(*read_spec("cifar10"), Overrides(models=["ddpm"])).models["ddpm"]
    flags = DDPMConfig(**config_from_openai_flags(IDDPM_CIFAR10))
    for field in (*BACKBONE_FIELDS, "num_timesteps", "schedule", "variance", "hybrid_lambda"):
        assert getattr(resolved.config, field) == getattr(flags, field), field
    model, _ = _theirs(IDDPM_CIFAR10)
    gen = DDPM(resolved.config, resolved.data_shape, torch.device("cpu"))
    gen.load_state_dict(gen.import_state(model.state_dict()))
    assert gen.num_parameters() == _count(model)


# --------------------------------------------------------------------------- sampling and maths


def test_25_step_respaced_loop_equals_p_sample_loop(monkeypatch):
    """Item 2: their ``p_sample_loop`` on ``timestep_respacing="25"`` and our 25-step
    sampler from the same x_T and per-step noise: the same images to 1e-4."""
    flags = dict(SMALL, timestep_respacing="25", diffusion_steps=1000)
    model, diffusion = _theirs(flags)
    ours = _ours(flags)
    ours.load_state_dict(ours.import_state(model.state_dict()))
    seeds, shape = [3, 11], (3, 16, 16)
    x_t = seeded_randn(seeds, shape, torch.device("cpu"), stream=0)
    # Their loop draws randn_like(x) at every step (the last one masked); ours draws step
    # i's noise from stream 1 + i and none at the last step.
    noises = [seeded_randn(seeds, shape, torch.device("cpu"), stream=1 + i) for i in range(24)]
    noises.append(torch.zeros_like(x_t))
    feed = iter(noises)
    monkeypatch.setattr(torch, "randn_like", lambda like, **_: next(feed))
    with torch.no_grad():
        expected = diffusion.p_sample_loop(model, (2, *shape), noise=x_t, clip_denoised=True)
    monkeypatch.undo()
    assert next(feed, None) is None  # every step drew its noise
    got = ours.sample(seeds, settings=DDPMSettings(steps=25))
    torch.testing.assert_close(got, expected.clamp(-1, 1), rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def shared():
    """Their small network and full 4000-step diffusion, and ours from its weights."""
    model, diffusion = _theirs(SMALL)
    ours = _ours(SMALL, likelihood_cdf="tanh")  # their decoder likelihood's CDF
    ours.load_state_dict(ours.import_state(model.state_dict()))
    ours.unet.eval()
    g = torch.Generator().manual_seed(5)
    x0 = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1).round(decimals=2)
    noise = torch.randn(4, 3, 16, 16, generator=g)
    return model, diffusion, ours, x0, noise


#: Timesteps where 1 - alpha-bar is tiny (t <= 2), in the middle, and at the end.
STEPS = torch.tensor([0, 1, 2, 3999])


def test_q_sample_posterior_and_p_mean_variance_equal_theirs(shared):
    """Acceptance: q_sample, the posterior and p_mean_variance within 2e-6 of theirs, at
    t = 0, 1, 2 too, where float32 coefficients would lose digits."""
    model, diffusion, ours, x0, noise = shared
    d = ours.diffusion
    for t in (STEPS, torch.tensor([1, 900, 2000, 3000])):
        xt = d.q_sample(x0, t, noise)
        torch.testing.assert_close(xt, diffusion.q_sample(x0, t, noise), rtol=0, atol=2e-6)
        mean, var, log_var = d.q_posterior(x0, xt, t)
        their_mean, their_var, their_log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
        torch.testing.assert_close(mean, their_mean, rtol=0, atol=2e-6)
        torch.testing.assert_close(var.expand_as(x0), their_var, rtol=2e-6, atol=0)
        torch.testing.assert_close(log_var.expand_as(x0), their_log_var, rtol=2e-6, atol=0)
        with torch.no_grad():
            theirs = diffusion.p_mean_variance(model, xt, t, clip_denoised=True)
            eps, v = ours._apply(xt, t, d, None)
        pred = d.p_mean_variance(eps, xt, t, "learned_range", v, clip=True)
        torch.testing.assert_close(pred.mean, theirs["mean"], rtol=0, atol=2e-6)
        torch.testing.assert_close(pred.log_variance, theirs["log_variance"], rtol=0, atol=2e-6)
        torch.testing.assert_close(pred.x0, theirs["pred_xstart"], rtol=0, atol=2e-6)


def test_hybrid_training_loss_equals_theirs(shared):
    """Acceptance: improved DDPM's hybrid loss (L_simple + lambda L_vlb, the VLB term on a
    frozen mean) within 2e-6 relative of their ``training_losses``, t = 0 included (there
    L_vlb is the decoder NLL, with their tanh CDF)."""
    model, diffusion, ours, x0, noise = shared
    with torch.no_grad():
        theirs = diffusion.training_losses(model, x0, STEPS, noise=noise)
        draws = TrainingDraws(x0, None, STEPS, torch.ones(4), noise)
        got = ours.losses(draws)
    torch.testing.assert_close(got["mse"], theirs["mse"], rtol=2e-6, atol=0)
    torch.testing.assert_close(got["total"], theirs["loss"], rtol=2e-6, atol=0)


def test_bits_per_dim_equals_calc_bpd_loop_with_their_cdf():
    """Acceptance: the full-chain bits/dim within 2e-6 of their ``calc_bpd_loop`` with the
    same (tanh) CDF and q_sample noise; the exact CDF differs from it by about 1e-3."""
    flags = dict(SMALL, diffusion_steps=100)
    model, diffusion = _theirs(flags)
    ours = _ours(flags, likelihood_cdf="tanh")
    ours.load_state_dict(ours.import_state(model.state_dict()))
    x0 = (torch.randint(0, 256, (2, 3, 16, 16)) / 127.5 - 1).float()
    torch.manual_seed(7)
    with torch.no_grad():
        expected = diffusion.calc_bpd_loop(model, x0, clip_denoised=True)["total_bpd"]
    torch.manual_seed(7)
    got = ours.bits_per_dim(Batch(x0, None))
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    exact = _ours(flags)
    exact.load_state_dict(ours.state_dict())
    torch.manual_seed(7)
    gap = (exact.bits_per_dim(Batch(x0, None)) - got).abs().max().item()
    assert 1e-5 < gap < 1e-2


def test_config_from_flags_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="unknown improved-/guided-diffusion flag 'num_chanels'"):
        config_from_openai_flags({"num_chanels": 128})
    with pytest.raises(ValueError, match="predict_xstart"):
        config_from_openai_flags({"predict_xstart": True})
    assert config_from_openai_flags({"timestep_respacing": "10,15,20"})["sample_steps"] == (
        "10+15+20"
    )


# --------------------------------------------------------------------------- through bench run

DIGITS_FLAGS = dict(
    image_size=16,
    num_channels=32,
    channel_mult="1,2",
    num_res_blocks=1,
    attention_resolutions="8",
    num_heads=2,
    class_cond=True,
    learn_sigma=True,
    diffusion_steps=100,
    noise_schedule="cosine",
    timestep_respacing="10",
)


def _digits_checkpoint(path: Path, **changes) -> Path:
    """A class-conditional 1-channel UNet of DIGITS_FLAGS built by their ``UNetModel``."""
    from guided_diffusion.unet import UNetModel

    torch.manual_seed(0)
    net = UNetModel(
        image_size=16,
        in_channels=1,
        model_channels=changes.get("model_channels", 32),
        out_channels=2,
        num_res_blocks=changes.get("num_res_blocks", 1),
        attention_resolutions=(2,),
        channel_mult=(1, 2),
        num_classes=10,
        num_heads=2,
        use_scale_shift_norm=True,
    )
    torch.save(net.state_dict(), path)
    return path


def _digits_spec(tmp_path: Path) -> Path:
    config = config_from_openai_flags(DIGITS_FLAGS)
    fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in config.items())
    path = tmp_path / "openai-digits.toml"
    path.write_text(
        f"""
[benchmark]
name = "openai-digits"
dataset = "digits"
device = "cpu"

[sample]
num_samples = 40
batch_size = 20

[evaluate]
extractor = "digits"
metrics = ["fid"]
bpd_images = 8

[timing]
repeats = 1
warmup = 0
batch_size = 8

[models.ddpm]
generator = "ddpm"
config = {{ {fields} }}
"""
    )
    return path


def test_bench_run_evaluates_a_guided_diffusion_checkpoint(cli, tmp_path):
    """Acceptance: ``bench run SPEC --checkpoint ddpm=model.pt`` on a checkpoint their code
    saved trains nothing, evaluates end to end and writes results like any model."""
    ckpt = _digits_checkpoint(tmp_path / "model000100.pt")
    out = tmp_path / "runs"
    spec = _digits_spec(tmp_path)
    result = cli("run", str(spec), "--checkpoint", f"ddpm={ckpt}", "--out", str(out))
    assert result.code == 0, result.err
    (run,) = out.iterdir()
    metrics = json.loads((run / "ddpm" / "metrics.json").read_text())
    assert metrics["train_steps"] == 0 and metrics["nfe"] == 10
    assert metrics["parameters"] == _count_state(ckpt)
    assert metrics["metrics"]["fid"]["value"] > 0
    assert metrics["extra"]["bits_per_dim"]["value"] > 0
    assert (run / "ddpm" / "samples.png").is_file()


def _count_state(path: Path) -> int:
    return sum(v.numel() for v in torch.load(path, weights_only=True).values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_channels": 64}, r"tensor time_embed\.0\.weight is \[256, 64\], the given "),
        ({"num_res_blocks": 2}, r"has no tensor input_blocks\.2\.0\.op\.weight \[32, 32, 3, 3\]"),
    ],
)
def test_mismatching_checkpoint_is_one_line_naming_the_tensor(cli, tmp_path, changes, message):
    """Item 5: tensors that do not fit the flags name the first misfit with both shapes;
    nothing is written."""
    ckpt = _digits_checkpoint(tmp_path / "model.pt", **changes)
    out = tmp_path / "runs"
    spec = _digits_spec(tmp_path)
    result = cli("run", str(spec), "--checkpoint", f"ddpm={ckpt}", "--out", str(out))
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1  # checked before any work or progress
    assert "Traceback" not in result.err
    assert re.search(message, result.err), result.err
    assert not out.exists() or not any(out.iterdir())


def test_imagenet64_spec_holds_their_flags_and_refuses_in_one_line(cli, tmp_path):
    """Item 3: imagenet64-openai.toml is guided-diffusion's 64x64 model (its flags' config,
    1000 classes, 250 respaced steps); without statistics, or with a checkpoint of another
    network, it stops in one line before any work."""
    plan = resolve(*read_spec("imagenet64-openai"), Overrides())
    model = plan.models["ddpm"]
    assert model.data_shape == DataShape(3, 64, 1000)
    flags = config_from_openai_flags(ADM_IMAGENET64)
    for field, value in flags.items():
        assert getattr(model.config, field) == value, field
    assert model.settings.steps == 250 and plan.evaluate.bpd_images == 0
    out = tmp_path / "runs"
    ckpt = _digits_checkpoint(tmp_path / "model.pt")
    no_stats = cli("run", "imagenet64-openai", "--checkpoint", f"ddpm={ckpt}", "--out", str(out))
    assert no_stats.code == 2 and "--reference-stats" in no_stats.err
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    wrong = cli(
        "run", "imagenet64-openai", "--checkpoint", f"ddpm={ckpt}",
        "--reference-stats", str(stats), "--out", str(out),
    )  # fmt: skip
    assert wrong.code == 2 and len(wrong.err.strip().splitlines()) == 1, wrong.err
    assert "time_embed.0.weight is [128, 32], the given flags' network expects [768" in wrong.err
    assert not out.exists() or not any(out.iterdir())


def test_unknown_flag_in_the_config_is_a_spec_error(cli, tmp_path):
    """Item 5: their flag names where ours differ are spec errors naming the field."""
    spec = _digits_spec(tmp_path)
    spec.write_text(spec.read_text().replace("channels = 32", "num_channels = 32", 1))
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2 and "models.ddpm.config.num_channels" in result.err


def test_extra_and_class_tensors_are_named(tmp_path):
    """A tensor the flags' network lacks is named; a class embedding with a null class
    (null_label = true) names the label embedding's shapes."""
    state = torch.load(_digits_checkpoint(tmp_path / "model.pt"), weights_only=True)
    gen = DDPM(DDPMConfig(**config_from_openai_flags(DIGITS_FLAGS)), DataShape(1, 16, 10), "cpu")
    with pytest.raises(ValueError, match=r"holds tensor head\.weight \[2\], which"):
        gen.import_state({**state, "head.weight": torch.ones(2)})
    config = {**config_from_openai_flags(DIGITS_FLAGS), "null_label": True, "p_uncond": 0.1}
    guided = DDPM(DDPMConfig(**config), DataShape(1, 16, 10), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"label_emb\.weight is \[10, 128\].*\[11, 128\]"):
        guided.import_state(state)


def test_checkpoint_needs_openai_time_embedding(tmp_path):
    ckpt = _digits_checkpoint(tmp_path / "model.pt")
    config = {**config_from_openai_flags(DIGITS_FLAGS), "time_embedding": "ho"}
    gen = DDPM(DDPMConfig(**config), DataShape(1, 16, 10), torch.device("cpu"))
    with pytest.raises(CheckpointError, match='time_embedding = "openai"'):
        load_checkpoint(gen, ckpt, "ddpm")


def test_no_null_label_means_no_guidance():
    config = DDPMConfig(**config_from_openai_flags(DIGITS_FLAGS))
    with pytest.raises(ValueError, match="null_label = false"):
        DDPM.check_settings(config, DataShape(1, 16, 10), DDPMSettings(guidance=2.0))
    with pytest.raises(ValueError, match="set p_uncond = 0"):
        DDPMConfig(conditional=True, null_label=False)
