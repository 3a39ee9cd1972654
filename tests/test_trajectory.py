"""Denoising trajectories: the x0 a diffusion model predicts along its own sampling path,
drawn as a strip per model (``trajectory.png``) and shown in the HTML report."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from PIL import Image

from genbench.generators import DataShape
from genbench.generators.dcgan import DCGAN, DCGANConfig
from genbench.generators.ddpm import DDPM, DDPMConfig, DDPMSettings
from genbench.generators.edm import EDM, EDMConfig
from genbench.generators.vdpm import VDPM, VDPMConfig
from tests.test_ddpm import TINY as DDPM_TINY
from tests.test_edm import TINY as EDM_TINY
from tests.test_vdpm import TINY as VDPM_TINY

CPU = torch.device("cpu")
DIGITS = DataShape(channels=1, image_size=16, num_classes=0)
SEEDS = [3, 11]


def _ddpm(**overrides) -> DDPM:
    torch.manual_seed(0)
    config = {**DDPM_TINY, "num_timesteps": 50, "sample_steps": 10, **overrides}
    return DDPM(DDPMConfig(**config), DIGITS, CPU)


def _models():
    torch.manual_seed(0)
    yield "edm", EDM(EDMConfig(**EDM_TINY), DIGITS, CPU), None
    yield "ddpm ancestral", _ddpm(), None
    yield "ddpm ddim", _ddpm(), DDPMSettings(steps="ddim5")
    torch.manual_seed(0)
    yield "vdpm", VDPM(VDPMConfig(**VDPM_TINY), DIGITS, CPU), None


@pytest.mark.parametrize("name,gen,settings", list(_models()), ids=lambda v: str(v)[:14])
def test_trajectory_follows_the_sampling_path_to_the_sample(name, gen, settings):
    images = gen.sample(SEEDS, None, settings)
    points = gen.trajectory(SEEDS, None, settings)
    # one point per network call: its x0 has the images' shape, the levels only fall
    assert len(points) == gen.nfe(settings)
    assert all(p.x0.shape == images.shape for p in points)
    sigmas = [p.sigma for p in points]
    assert all(a >= b for a, b in itertools.pairwise(sigmas)) and sigmas[-1] > 0
    # the last prediction is the sample, bit for bit: the same path, not a second one
    assert torch.equal(points[-1].x0.clamp(-1.0, 1.0), images)


def test_trajectory_noise_levels_are_each_process_own_sigma():
    edm = EDM(EDMConfig(**EDM_TINY), DIGITS, CPU)
    assert next(p.sigma for p in edm.trajectory(SEEDS)) == pytest.approx(edm.sigmas(2)[0].item())
    ddpm = _ddpm()
    abar = ddpm.diffusion.alphas_cumprod
    first = ddpm.trajectory(SEEDS)[0].sigma  # x_T / sqrt(abar_T) = x0 + sigma eps
    assert first == pytest.approx(((1 - abar[-1]) / abar[-1]).sqrt().item(), rel=1e-9)
    vdpm = VDPM(VDPMConfig(**VDPM_TINY), DIGITS, CPU)
    logsnr = vdpm.logsnr_grid(VDPM_TINY.get("sample_steps", 4))[0].item()
    assert vdpm.trajectory(SEEDS)[0].sigma == pytest.approx(torch.tensor(-logsnr / 2).exp().item())


def test_a_gan_has_no_trajectory():
    gan = DCGAN(DCGANConfig(ngf=8, ndf=8, nz=16), DIGITS, CPU)
    assert gan.trajectory(SEEDS) is None


EDM_SPEC = (
    "{ channels = 8, channel_mult = [1, 2], num_res_blocks = 1, attn_resolutions = [], "
    "dropout = 0.0, norm_groups = 4, time_embed_dim = 16, steps = 4 }"
)


def test_run_writes_the_strip_and_the_report_shows_it(cli, tiny_spec, tmp_path):
    extra = f'\n[models.edm]\ngenerator = "edm"\nconfig = {EDM_SPEC}\n'
    spec = tiny_spec(steps=0, num_samples=20, extra=extra)
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 0, result.err
    (run,) = out.iterdir()
    sample = json.loads((run / "edm" / "metrics.json").read_text())["sample"]
    sigmas = sample["trajectory_sigmas"]
    # Heun over 4 levels (then 0) calls D 7 times at the 4 levels: all shown, the last
    # call's x0 being the sample (column 0)
    edm = EDM(EDMConfig(**{**EDM_TINY, "steps": 4}), DataShape(1, 16, 10), CPU)
    assert sigmas[:-1] == pytest.approx(edm.sigmas(4)[:3].tolist()) and sigmas[-1] == 0.0
    with Image.open(run / "edm" / "trajectory.png") as strip:
        # 4 seeds by 4 columns, digits enlarged to 64 px, 2 px padding
        assert strip.size == (4 * 64 + 5 * 2, 4 * 64 + 5 * 2)
    # a GAN predicts no x0: no strip, nothing recorded
    gan = json.loads((run / "dcgan" / "metrics.json").read_text())["sample"]
    assert gan.get("trajectory_sigmas") is None and not (run / "dcgan" / "trajectory.png").exists()
    html = (run / "report.html").read_text()
    assert html.count('alt="denoising trajectory of') == 1
    assert 'alt="denoising trajectory of edm"' in html and "Denoising trajectories" in html

    # trajectory_size = 0 turns the strip off
    spec_off = tmp_path / "off.toml"
    spec_off.write_text(
        spec.read_text().replace("grid_size = 16", "grid_size = 16\ntrajectory_size = 0")
    )
    out2 = tmp_path / "runs2"
    assert cli("run", str(spec_off), "--models", "edm", "--out", str(out2)).code == 0
    (run2,) = out2.iterdir()
    assert not (run2 / "edm" / "trajectory.png").exists()
    assert "Denoising trajectories" not in (run2 / "report.html").read_text()


def test_strip_picks_at_most_six_evenly_spaced_levels(tmp_path):
    from genbench.benchmarks.plan import resolve
    from genbench.benchmarks.sampling import TRAJECTORY_COLUMNS, write_trajectory
    from genbench.benchmarks.spec import read_spec

    spec = tmp_path / "s.toml"
    spec.write_text(
        '[benchmark]\nname = "t"\ndataset = "digits"\n[sample]\ntrajectory_size = 2\n'
        '[models.ddpm]\ngenerator = "ddpm"\nconfig = { num_timesteps = 50, sample_steps = 10 }\n'
    )
    (model,) = resolve(*read_spec(str(spec))).models.values()
    gen = _ddpm()
    sigmas = write_trajectory(gen, model, tmp_path / "t.png")
    every = [p.sigma for p in gen.trajectory([0, 1])]
    assert len(sigmas) == TRAJECTORY_COLUMNS and sigmas[-1] == 0.0
    # first and last calls, evenly spaced between: calls 0, 2, 4, 5, 7 of 10 (then the sample)
    assert sigmas[:-1] == [every[i] for i in (0, 2, 4, 5, 7)]
    with Image.open(tmp_path / "t.png") as strip:
        assert strip.size == (6 * 64 + 7 * 2, 2 * 64 + 3 * 2)
