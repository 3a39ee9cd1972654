"""A diffusers pipeline folder's scheduler is honoured (beta schedule, train steps,
prediction type, variance, clipping) or refused in one line; ``--checkpoint ddpm=DIR``
takes the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from pydantic import ValidationError

from genbench.generators.base import DataShape
from genbench.generators.ddpm import DDPM, DDPMConfig, DDPMSettings
from genbench.generators.unet import build_unet

CPU = torch.device("cpu")
DATA = DataShape(1, 16)
COSINE_V_500 = {
    "num_train_timesteps": 500,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "variance_type": "fixed_large",
}
LINEAR_EPS_1000 = {"num_train_timesteps": 1000, "beta_schedule": "linear"}


def _unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_unet(
        image_size=16,
        in_channels=1,
        out_channels=1,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        norm_groups=4,
    )
    # Non-zero outputs everywhere (build_unet starts some layers at zero in genbench's
    # recipe; this one does not, but a trained model never has zero outputs either).
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net


def save_pipeline(path: Path, scheduler: dict, seed: int = 0) -> Path:
    DDPMPipeline(unet=_unet(seed), scheduler=DDPMScheduler(**scheduler)).save_pretrained(path)
    return path


def test_the_scheduler_sets_the_process(tmp_path: Path) -> None:
    gen = DDPM.from_pretrained(save_pipeline(tmp_path / "v", COSINE_V_500), DATA, CPU)
    c = gen.config
    assert (c.num_timesteps, c.schedule, c.prediction, c.variance) == (
        500,
        "cosine",
        "v",
        "fixed_large",
    )
    assert (c.clip_denoised, c.rescale_timesteps, c.beta_start) == (True, False, None)
    plain = DDPM.from_pretrained(save_pipeline(tmp_path / "eps", LINEAR_EPS_1000), DATA, CPU)
    c = plain.config
    assert (c.num_timesteps, c.schedule, c.prediction, c.variance) == (
        1000,
        "linear",
        "epsilon",
        "fixed_small",  # diffusers' DDPMScheduler default
    )
    assert (c.beta_start, c.beta_end) == (0.0001, 0.02)
    # Same UNet weights, other process: other images from the same seeds.
    settings = DDPMSettings(steps=10)
    a, b = gen.sample([0, 1], settings=settings), plain.sample([0, 1], settings=settings)
    weights = [g.unet.state_dict()["conv_in.weight"] for g in (gen, plain)]
    assert torch.equal(*weights)
    assert (a - b).abs().max() > 0.1


def _diffusers_in_float64(scheduler: DDPMScheduler) -> DDPMScheduler:
    # diffusers keeps alpha-bar in float32, where 1 - alpha-bar near t = 0 keeps 3 to 4
    # digits; its step maths is dtype-agnostic, so compare both in float64.
    scheduler.alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), dim=0)
    scheduler.one = scheduler.one.double()
    return scheduler


@pytest.mark.parametrize(
    "scheduler",
    [
        COSINE_V_500,
        LINEAR_EPS_1000,
        {"num_train_timesteps": 300, "beta_schedule": "linear", "beta_start": 0.0002,
         "beta_end": 0.03, "prediction_type": "sample", "clip_sample": False},
        {"num_train_timesteps": 200, "beta_schedule": "scaled_linear",
         "prediction_type": "epsilon", "variance_type": "fixed_large"},
    ],
    ids=["cosine-v-500", "linear-eps-1000", "linear-x0-300-noclip", "scaled-linear-200"],
)  # fmt: skip
def test_one_step_equals_diffusers_scheduler(tmp_path: Path, scheduler: dict) -> None:
    path = save_pipeline(tmp_path / "pipe", scheduler)
    gen = DDPM.from_pretrained(path, DATA, CPU)
    ref = _diffusers_in_float64(DDPMPipeline.from_pretrained(path).scheduler)
    T = scheduler["num_train_timesteps"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g)
    for t in (T - 1, T // 2, 1, 0):
        steps = torch.full((2,), t, dtype=torch.long)
        with torch.no_grad():
            output = gen.unet(x, steps.float()).sample  # what the pipeline feeds its UNet
            pred, v = gen._outputs(x, steps, gen.diffusion, None)
        torch.testing.assert_close(pred, output)
        xd, pd = x.double(), output.double()
        expected = ref.step(pd, t, xd, generator=torch.Generator().manual_seed(t))
        noise = torch.randn(
            x.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64
        )
        eps = gen.eps_of(pd, xd, steps, gen.diffusion)
        p = gen.diffusion.p_mean_variance(
            eps, xd, steps, gen.config.variance, v, gen.config.clip_denoised
        )
        got = gen.diffusion.ancestral_step(p, steps, noise)
        torch.testing.assert_close(p.x0, expected.pred_original_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, expected.prev_sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"thresholding": True}, "unsupported scheduler field thresholding = true"),
        ({"beta_schedule": "sigmoid"}, "unsupported scheduler field beta_schedule = 'sigmoid'"),
        ({"variance_type": "learned"}, "unsupported scheduler field variance_type = 'learned'"),
        ({"clip_sample_range": 2.0}, "unsupported scheduler field clip_sample_range = 2.0"),
        ({"shift_sigmas": 3}, "unsupported scheduler field 'shift_sigmas'"),
        ({"_class_name": "ScoreSdeVeScheduler"}, "_class_name 'ScoreSdeVeScheduler'"),
    ],
)
def test_unsupported_scheduler_fields_are_refused_in_one_line(
    cli, tmp_path: Path, change: dict, expected: str
) -> None:
    path = save_pipeline(tmp_path / "pipe", LINEAR_EPS_1000)
    file = path / "scheduler" / "scheduler_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **change}))
    with pytest.raises(ValidationError, match=expected.replace("(", r"\(")):
        DDPMConfig(pretrained=path)
    out = tmp_path / "runs"
    result = cli("run", "smoke", "--models", "ddpm", "--checkpoint", f"ddpm={path}",
                 "--dataset", "digits", "--out", str(out))  # fmt: skip
    assert result.code == 2 and expected in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not out.exists()


def test_checkpoint_folder_on_the_command_line(cli, tmp_path: Path) -> None:
    path = save_pipeline(tmp_path / "pipe", COSINE_V_500)
    result = cli("run", "smoke", "--models", "ddpm", "--checkpoint", f"ddpm={path}", "--dry-run")
    assert result.code == 0, result.err
    import tomllib

    entry = tomllib.loads(result.out[result.out.index("[benchmark]") :])["models"]["ddpm"]
    c = entry["config"]
    assert c["pretrained"] == str(path) and "checkpoint" not in entry
    assert (c["num_timesteps"], c["schedule"], c["prediction"]) == (500, "cosine", "v")
    # The folder's network, not the default backbone, is what the dry run shows.
    assert "channels" not in c and "channel_mult" not in c
    params = sum(p.numel() for p in _unet().parameters())
    network = f"# models.ddpm: pretrained network {path / 'unet'}: UNet2DModel, "
    assert f"{network}{params / 1e6:.2f}M parameters\n" in result.out
    assert "block_out_channels = [8, 16]" in result.out and "layers_per_block = 1" in result.out
    # ... and the resolved spec runs as a spec, resolving to itself.
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(result.out)
    again = cli("run", str(resolved), "--dry-run")
    assert again.code == 0, again.err
    assert tomllib.loads(again.out)["models"] == tomllib.loads(result.out)["models"]
    # smoke's entry asks for 400 steps, so they fine-tune the folder's network (a spec
    # entry that sets no length evaluates a checkpoint as it is)
    assert entry["train"]["steps"] == 400
    # The smoke entry's own backbone and process (T = 50, learned range) gave way to the
    # folder's; a field a spec sets beside `pretrained` that contradicts the scheduler is
    # refused, not overridden.
    clash = tmp_path / "clash.toml"
    clash.write_text(CLASH.format(path=path))
    refused = cli("run", str(clash), "--dry-run")
    assert refused.code == 2 and "num_timesteps = 1000 contradicts" in refused.err
    # Folders are for generators that load them.
    other = cli("run", "smoke", "--models", "gan", "--checkpoint", f"dcgan={path}", "--dry-run")
    assert other.code == 2 and "takes checkpoint files only" in other.err


CLASH = """
[benchmark]
name = "clash"
[models.ddpm]
generator = "ddpm"
config = {{ pretrained = "{path}", num_timesteps = 1000 }}
"""


def test_hub_id_from_the_local_cache_or_a_clear_offline_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--someone--ddpm-tiny"
    save_pipeline(repo / "snapshots" / "0123abcd", COSINE_V_500)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    config = DDPMConfig(pretrained="someone/ddpm-tiny")
    assert config.pretrained == repo / "snapshots" / "0123abcd"
    assert (config.num_timesteps, config.prediction) == (500, "v")
    with pytest.raises(ValidationError, match="not in the local Hugging Face cache") as exc:
        DDPMConfig(pretrained="someone/absent-model")
    assert "huggingface-cli download someone/absent-model" in str(exc.value)
