"""Classifier-free guidance has one meaning everywhere: the scale s of diffusers'
``guidance_scale`` (s = 1 conditional, s = 0 unconditional, s = 1 + w), the same mix for
DDPM, EDM and VDPM; and sampling settings are typed per generator, checked at spec load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import read_spec
from genbench.core.errors import SpecError
from genbench.generators import GENERATORS
from genbench.generators.guidance import drop_labels, guide, is_guided, net_labels


def test_guide_is_the_diffusers_scale():
    cond, uncond = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(guide(cond, uncond, 1.0), cond)  # s = 1: conditional
    torch.testing.assert_close(guide(cond, uncond, 0.0), uncond)  # s = 0: unconditional
    s = 2.5  # Ho & Salimans' w = s - 1: (1 + w) cond - w uncond
    w = s - 1
    torch.testing.assert_close(guide(cond, uncond, s), (1 + w) * cond - w * uncond)
    assert is_guided(1.5, True) and not is_guided(1.0, True) and not is_guided(1.5, False)


def test_drop_labels_rate_and_no_draw_at_zero():
    torch.manual_seed(0)
    dropped = drop_labels(torch.zeros(100_000, dtype=torch.long), 0.1, 10)
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.005
    state = torch.get_rng_state()
    labels = torch.arange(5)
    assert drop_labels(labels, 0.0, 10) is labels
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG stream is untouched


def test_net_labels_null_class_without_labels():
    cpu = torch.device("cpu")
    assert net_labels(None, 3, 10, cpu).tolist() == [10, 10, 10]
    out = net_labels(torch.tensor([1, 2], dtype=torch.int32), 2, 10, cpu)
    assert out.dtype == torch.long and out.tolist() == [1, 2]


# --------------------------------------------------------------------------- one mix


class ToyDenoiser(nn.Module):
    """A stand-in for the UNet of every diffusion generator, called as diffusers'
    ``UNet2DModel``: an output that depends on the input, the time and the class, the
    null class (10) included. With ``mix`` set it instead returns, for any label, the
    guided mix uncond + s (cond - uncond) of the plain toy at the labels given to
    ``mix``: what every generator must compute itself when asked for guidance s."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.mix: tuple[torch.Tensor, float] | None = None

    def plain(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift = 0.05 * (labels.float() - 4.5).view(-1, 1, 1, 1)
        return 0.3 * x + shift * torch.cos(t.float().view(-1, 1, 1, 1) / 7.0)

    def forward(self, x, t, class_labels=None, augment_labels=None, return_dict=None):
        """UNet2DModel's call (``return_dict=False``: a tuple) or EDM's DDPM++ call (a
        tensor)."""
        self.rows += x.shape[0]
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if self.mix is None:
            out = self.plain(x, t, class_labels)
        else:
            labels, scale = self.mix
            null = torch.full_like(labels, 10)
            out = guide(self.plain(x, t, labels), self.plain(x, t, null), scale)
        return (out,) if return_dict is False else out


SPEC = """
[benchmark]
name = "guided"
dataset = "digits"
device = "cpu"

[sample]
num_samples = 10
guidance = 1.5

[models.ddpm]
generator = "ddpm"
sample = { steps = "ddim4" }
[models.ddpm.config]
num_timesteps = 20
variance = "fixed_large"
conditional = true
{tiny}
[models.edm]
generator = "edm"
sample = { steps = 3 }
config = { {tiny_inline} }

[models.vdpm]
generator = "vdpm"
sample = { steps = 4 }
config = { {tiny_inline}, clip_denoised = false }
"""
# (VDPM clips each branch's x0 before mixing, as v-diffusion-torch; unclipped, mixing x0 is
# mixing the raw outputs, which this test checks. The clipped mix: tests/test_vdpm.py.)
TINY_NET = "channels = 8, channel_mult = [1], num_res_blocks = 1, attn_resolutions = []"
SPEC = SPEC.replace("{tiny_inline}", TINY_NET + ", norm_groups = 4").replace(
    "{tiny}", TINY_NET.replace(", ", "\n") + "\nnorm_groups = 4\n"
)


def _with_toy(model) -> tuple[object, ToyDenoiser]:
    torch.manual_seed(0)
    gen = model.generator_class(model.config, model.data_shape, torch.device("cpu"))
    toy = ToyDenoiser()
    (name,) = gen.modules()  # the one network, held as an attribute of the same name
    setattr(gen, name, toy)
    gen.modules = lambda: {name: toy}
    return gen, toy


def test_guidance_in_a_spec_is_one_mix_for_ddpm_edm_and_vdpm(tmp_path: Path):
    path = tmp_path / "guided.toml"
    path.write_text(SPEC)
    plan = resolve(*read_spec(str(path)), Overrides())
    seeds, labels = [3, 1, 4], torch.tensor([3, 1, 4])
    for name, model in plan.models.items():
        assert model.settings.guidance == 1.5, name  # the spec's scale, untranslated
        gen, toy = _with_toy(model)
        at = {s: model.settings.model_copy(update={"guidance": s}) for s in (0.0, 1.0)}
        guided = gen.sample(seeds, labels, model.settings)
        # Two network rows per image and step under guidance, one for the plain model.
        assert toy.rows == gen.nfe(model.settings) * len(seeds) == 2 * gen.nfe(at[1.0]) * 3
        # The same trajectory from a network that returns the expected mix itself, sampled
        # as the plain conditional model (s = 1): the generator mixed exactly that way.
        toy.mix = (labels, 1.5)
        expected = gen.sample(seeds, labels, at[1.0])
        torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5, msg=name)
        # s = 0 is the unconditional model: the null label for every image.
        toy.mix = None
        zero, none = gen.sample(seeds, labels, at[0.0]), gen.sample(seeds, None, at[1.0])
        torch.testing.assert_close(zero, none, rtol=1e-5, atol=1e-5, msg=name)
        assert (guided - zero).abs().max() > 1e-3, name  # the label mattered


# --------------------------------------------------------------------------- typed settings


def test_settings_are_typed_per_generator():
    fields = {name: set(GENERATORS.get(name).Settings.model_fields) for name in GENERATORS}
    assert fields == {
        "cascade": {"steps"},
        "cold": {"sampler"},
        "dcgan": set(),
        "ddgan": set(),
        "ddpm": {"steps", "guidance", "classifier_scale"},
        "edm": {"steps", "guidance", "classifier_scale"},
        "vdpm": {"steps", "guidance"},
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('[models.dcgan]\ngenerator = "dcgan"\nsample = { steps = 10 }\n',
         "models.dcgan.sample.steps: this generator has no sampling setting 'steps' (its "
         "settings: none)"),
        ('[models.ddgan]\ngenerator = "ddgan"\nsample = { guidance = 2.0 }\n',
         "models.ddgan.sample.guidance: this generator has no sampling setting 'guidance'"),
        ('[models.ddpm]\ngenerator = "ddpm"\nsample = { steps = "10,15,20" }\n',
         "models.ddpm.sample: steps '10,15,20': write iDDPM sections with '+'"),
        ('[models.ddpm]\ngenerator = "ddpm"\nsample = { guidance = 2.0 }\n',
         "models.ddpm.sample: guidance: 2.0 needs a class-conditional model"),
        ('[models.edm]\ngenerator = "edm"\nsample = { steps = "ddim5" }\n',
         "models.edm.sample.steps: "),
    ],
)  # fmt: skip
def test_a_setting_the_generator_lacks_is_a_spec_error(entry, message, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[benchmark]\nname = "s"\n' + entry)
    with pytest.raises(SpecError) as info:
        resolve(*read_spec(str(path)), Overrides())
    assert message in str(info.value)


def test_steps_on_dcgan_fails_the_run_before_training(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=50, extra="")
    bad = tmp_path / "bad.toml"
    text = spec.read_text().replace("[models.dcgan]", "[models.dcgan]\nsample = { steps = 10 }")
    bad.write_text(text)
    out = tmp_path / "runs"
    result = cli("run", str(bad), "--out", str(out))
    assert result.code == 2
    assert result.err.strip().count("\n") == 0  # one line
    assert "models.dcgan.sample.steps: this generator has no sampling setting" in result.err
    assert "train dcgan" not in result.err and not out.exists()  # nothing ran, nothing written
