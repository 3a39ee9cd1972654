"""Classifier guidance (Dhariwal & Nichol 2021): the run's noise-conditional classifier
(``[classifier]``), trained by the harness, and ``classifier_scale`` in DDPM (ancestral and
DDIM) and EDM sampling."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genbench.benchmarks.guidance_classifier import prepare_classifier
from genbench.generators import Batch, DataShape
from genbench.generators.classifier import ClassifierConfig, NoisyClassifier, to_vp
from genbench.generators.ddpm import DDPM, DDPMConfig, DDPMSettings
from genbench.generators.edm import EDM, EDMConfig
from genbench.generators.guidance import ClassifierGuidedSettings
from tests.test_ddpm import TINY as DDPM_TINY
from tests.test_edm import TINY as EDM_TINY
from tests.trainkit import fit

CPU = torch.device("cpu")
DIGITS = DataShape(channels=1, image_size=16, num_classes=10)
SEEDS = [4, 9, 21]
LABELS = torch.tensor([2, 7, 7])


def _classifier() -> NoisyClassifier:
    torch.manual_seed(0)
    return NoisyClassifier(ClassifierConfig(channels=8), DIGITS, CPU)


def _ddpm() -> DDPM:
    torch.manual_seed(0)
    config = {**DDPM_TINY, "num_timesteps": 50, "sample_steps": 10}
    gen = DDPM(DDPMConfig(**config), DIGITS, CPU)
    gen.classifier = _classifier()
    return gen


def _edm() -> EDM:
    torch.manual_seed(0)
    gen = EDM(EDMConfig(**EDM_TINY), DIGITS, CPU)
    gen.classifier = _classifier()
    return gen


CASES = [
    ("ddpm ancestral", _ddpm, lambda **k: DDPMSettings(**k)),
    ("ddpm ddim", _ddpm, lambda **k: DDPMSettings(steps="ddim5", **k)),
    ("edm", _edm, lambda **k: ClassifierGuidedSettings(**k)),
]


@pytest.mark.parametrize("name,make,settings", CASES, ids=[c[0] for c in CASES])
def test_scale_zero_is_unguided_sampling_exactly(name, make, settings):
    gen = make()
    plain = gen.sample(SEEDS, LABELS, settings())
    assert torch.equal(gen.sample(SEEDS, LABELS, settings(classifier_scale=0.0)), plain)
    guided = gen.sample(SEEDS, LABELS, settings(classifier_scale=3.0))
    assert (guided - plain).abs().max() > 1e-3  # a positive scale does move the samples
    # ... and each image still depends only on its seed and label
    again = gen.sample(SEEDS[1:], LABELS[1:], settings(classifier_scale=3.0))
    assert torch.equal(again, guided[1:])


class _ConstantGradient:
    """A classifier whose grad log p(y | x_vp) is a fixed tensor: the guided step must move
    by exactly the papers' multiple of it."""

    def __init__(self, g: torch.Tensor) -> None:
        self.g, self.sigmas = g, []

    def grad_log_prob(self, x_vp, sigma, labels):
        self.sigmas.append(float(sigma))
        return self.g.expand_as(x_vp)


def test_edm_denoiser_moves_by_scale_sigma_squared_times_the_gradient():
    gen = _edm()
    g = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    gen.classifier = _ConstantGradient(g)
    plain = gen._sampling_denoiser(3, LABELS, None)
    from genbench.generators.edm import _classifier_guided

    guided = _classifier_guided(plain, gen.classifier, LABELS, 2.0)
    x = torch.randn(3, 1, 16, 16)
    for sigma in (0.3, 5.0):
        # grad_x log p(y | x / sqrt(1 + sigma^2)) = g / sqrt(1 + sigma^2)
        expected = 2.0 * sigma**2 * g / math.sqrt(1 + sigma**2)
        torch.testing.assert_close(guided(x, sigma) - plain(x, sigma), expected.expand_as(x))


def test_ddpm_steps_move_as_algorithms_1_and_2():
    gen = _ddpm()
    d = gen._process(gen._plan("ddim5"))
    x = torch.randn(3, 1, 16, 16)
    t = torch.full((3,), 2, dtype=torch.long)
    out = gen._predict(x, t, d, None, None)
    g = torch.randn(3, 1, 16, 16)
    plan = gen._plan("ddim5")
    # DDIM: eps' = eps - sqrt(1 - alpha-bar_t) g, then the usual step
    shifted = (out[0] - (1 - d.alphas_cumprod[2]).sqrt().float() * g, out[1])
    torch.testing.assert_close(
        gen._update(plan, d, x, t, out, None, g), gen._update(plan, d, x, t, shifted, None)
    )
    # ancestral: the mean moves by Sigma g (no noise given: the mean itself)
    plan = gen._plan(10)
    d = gen._process(plan)
    out = gen._predict(x, t, d, None, None)
    pred = d.p_mean_variance(out[0], x, t, gen.config.variance, out[1], gen.config.clip_denoised)
    moved = gen._update(plan, d, x, t, out, None, g) - gen._update(plan, d, x, t, out, None)
    torch.testing.assert_close(moved, pred.log_variance.exp() * g)


def test_the_classifier_sees_each_process_noise_level():
    g = torch.zeros(1, 1, 16, 16)
    ddpm = _ddpm()
    ddpm.classifier = probe = _ConstantGradient(g)
    ddpm.sample(SEEDS, LABELS, DDPMSettings(classifier_scale=1.0))
    expected = [math.sqrt(1 / a - 1) for a in ddpm._process(ddpm._plan(10)).alphas_cumprod.tolist()]
    assert probe.sigmas == pytest.approx(expected[::-1])


def test_classifier_learns_and_its_gradient_points_to_the_label():
    from genbench.data.datasets import DATASETS

    train = DATASETS.get("digits").load("train", None)
    images = torch.stack([train[i][0] for i in range(256)])
    labels = torch.tensor([int(train[i][1]) for i in range(256)])
    torch.manual_seed(0)
    clf = NoisyClassifier(ClassifierConfig(channels=8, lr=3e-3), DIGITS, CPU)
    before = (clf.logits(images, 0.01).argmax(1) == labels).float().mean()
    fit(clf, Batch(images, labels), steps=60)
    after = (clf.logits(images, 0.01).argmax(1) == labels).float().mean()
    assert before < 0.3 and after > 0.8
    # a small step along grad log p(y | x) raises log p(y | x)
    x = to_vp(images[:8] + 0.5 * torch.randn(8, 1, 16, 16), torch.full((8,), 0.5))
    y = torch.tensor([3] * 8)
    grad = clf.grad_log_prob(x, 0.5, y)
    lp = lambda z: torch.log_softmax(clf.logits(z, 0.5), 1)[:, 3]  # noqa: E731
    assert (lp(x + 0.05 * grad) > lp(x)).all()


CLASSIFIER_SPEC = """
[benchmark]
name = "cg"
dataset = "digits"
device = "cpu"

[train]
steps = 200
batch_size = 64
log_every = 100

[sample]
num_samples = 20
batch_size = 20
grid_size = 20
trajectory_size = 0

[evaluate]
metrics = ["fid"]
bpd_images = 0

[timing]
repeats = 1
warmup = 0
batch_size = 10

[classifier]
config = {{ channels = 16 }}
{classifier}
[models.ddpm]
generator = "ddpm"
train = {{ ema_decay = 0.99 }}
sample = {{ classifier_scale = 6.0 }}
{checkpoint}

[models.ddpm.config]
num_timesteps = 50
schedule = "cosine"
channels = 16
channel_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = []
norm_groups = 8
dropout = 0.0
lr = 2e-3
warmup_steps = 50
hflip = false
sample_steps = "ddim10"
"""


def _accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the shipped digits classifier (the evaluation's, not the guide)."""
    from genbench.eval.digits_net import DIGITS_WEIGHTS, DigitsNet

    net = DigitsNet()
    net.load_state_dict(load_file(str(DIGITS_WEIGHTS)))
    with torch.no_grad():
        return (net.eval()(images).argmax(1) == labels).float().mean().item()


def test_run_trains_the_classifier_and_guidance_raises_class_accuracy(cli, tmp_path):
    spec = tmp_path / "cg.toml"
    spec.write_text(
        CLASSIFIER_SPEC.format(
            classifier="[classifier.train]\nsteps = 200\nbatch_size = 64\n", checkpoint=""
        )
    )
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 0, result.err
    (run,) = out.iterdir()
    record = json.loads((run / "classifier" / "classifier.json").read_text())
    assert record["train_steps"] == 200 and record["source"] is None
    assert record["accuracy_split"] == "test" and record["accuracy_images"] == 360
    assert record["accuracy"]["0"] > 0.6 > record["accuracy"]["2"]  # noise makes it harder
    weights = run / "classifier" / "classifier.safetensors"
    sample = json.loads((run / "ddpm" / "metrics.json").read_text())["sample"]
    assert sample["classifier_scale"] == 6.0 and sample["classifier_sha256"] == record["sha256"]
    resolved = tomllib.loads((run / "spec.toml").read_text())
    assert resolved["classifier"]["train"]["steps"] == 200

    # Guided towards label y, the evaluation's digits classifier finds y more often.
    from genbench.benchmarks.checkpoints import load_checkpoint
    from genbench.benchmarks.plan import resolve
    from genbench.benchmarks.spec import read_spec

    plan = resolve(*read_spec(str(spec)))
    ddpm = plan.models["ddpm"].generator_class(plan.models["ddpm"].config, DIGITS, CPU)
    load_checkpoint(ddpm, run / "ddpm" / "checkpoint.safetensors", "ddpm")
    ddpm.classifier = NoisyClassifier(plan.classifier.config, DIGITS, CPU)
    ddpm.classifier.load_state_dict(load_file(str(weights)))
    seeds = list(range(60))
    labels = torch.tensor(seeds) % 10
    unguided = _accuracy(ddpm.sample(seeds, labels, DDPMSettings(classifier_scale=0.0)), labels)
    guided = _accuracy(ddpm.sample(seeds, labels, DDPMSettings(classifier_scale=6.0)), labels)
    print(f"class accuracy unguided {unguided:.3f}, guided {guided:.3f}")
    assert guided > unguided + 0.15, (unguided, guided)

    # A trained classifier file is used as it is: not trained again, its source recorded,
    # copied into the run unchanged.
    from genbench.benchmarks.inputs import RunInputs

    spec2 = tmp_path / "cg2.toml"
    spec2.write_text(CLASSIFIER_SPEC.format(classifier=f'checkpoint = "{weights}"', checkpoint=""))
    plan2 = resolve(*read_spec(str(spec2)))
    run2 = tmp_path / "run2"
    clf = prepare_classifier(plan2, run2, CPU, RunInputs(plan2, CPU))
    record2 = json.loads((run2 / "classifier" / "classifier.json").read_text())
    assert record2["train_steps"] == 0 and record2["source"] == str(weights)
    assert record2["sha256"] == record["sha256"] and record2["accuracy"] == record["accuracy"]
    assert not (run2 / "classifier" / "train_log.jsonl").exists()
    assert all(torch.equal(v, load_file(str(weights))[k]) for k, v in clf.state_dict().items())


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda s: s.replace("[classifier]\nconfig = { channels = 16 }\n", ""),
            "models.ddpm.sample.classifier_scale needs a [classifier] section",
        ),
        (
            lambda s: s.replace("[models.ddpm", "[models.classifier"),
            "models.classifier: the name of the [classifier]'s folder",
        ),
        (
            lambda s: s.replace(
                "channels = 16 }\n", "channels = 16, sigma_min = 5.0, sigma_max = 1.0 }\n"
            ),
            "sigma_min must be below sigma_max",
        ),
        (
            lambda s: s.replace(
                "[classifier]\nconfig = { channels = 16 }\n",
                "[classifier]\nconfig = { channels = 16 }\ntrain = { steps = 0 }\n",
            ),
            "classifier.train: no training",
        ),
        (
            lambda s: s.replace("classifier_scale = 6.0", "classifier_scale = -1.0"),
            "classifier_scale",
        ),
        (
            lambda s: s.replace("num_timesteps = 50\n", "num_timesteps = 50\nimage_size = 8\n"),
            "models.ddpm: classifier guidance at image_size 8, but the [classifier] learns the "
            "data's 16 px",
        ),
    ],
)
def test_spec_errors_are_one_line(cli, tmp_path, edit, message):
    spec = tmp_path / "bad.toml"
    spec.write_text(edit(CLASSIFIER_SPEC.format(classifier="", checkpoint="")))
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1


def test_a_missing_classifier_file_is_a_usage_error(cli, tmp_path):
    spec = tmp_path / "bad.toml"
    missing = tmp_path / "nope.safetensors"
    spec.write_text(CLASSIFIER_SPEC.format(classifier=f'checkpoint = "{missing}"', checkpoint=""))
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2 and f"classifier.checkpoint: no such file: {missing}" in result.err


def test_a_classifier_file_of_another_config_is_a_clear_error(tmp_path):
    from genbench.benchmarks.inputs import RunInputs
    from genbench.benchmarks.plan import resolve
    from genbench.benchmarks.spec import read_spec
    from genbench.core.errors import CheckpointError

    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(_classifier().state_dict(), str(other))  # channels 8, not 16
    spec = tmp_path / "s.toml"
    spec.write_text(CLASSIFIER_SPEC.format(classifier=f'checkpoint = "{other}"', checkpoint=""))
    plan = resolve(*read_spec(str(spec)))
    with pytest.raises(CheckpointError, match="not a guidance classifier of this"):
        prepare_classifier(plan, tmp_path / "run", CPU, RunInputs(plan, CPU))
    assert Path(tmp_path / "run" / "classifier").is_dir()


def test_bench_speed_times_guided_sampling_with_an_untrained_classifier(cli, tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(CLASSIFIER_SPEC.format(classifier="", checkpoint=""))
    out = tmp_path / "speed"
    args = ("speed", str(spec), "--batch-sizes", "2", "--repeats", "10", "--out", str(out))
    result = cli(*args, "--history", str(tmp_path / "h.jsonl"))
    assert result.code == 0, result.err
    (run,) = out.iterdir()
    (record,) = json.loads((run / "speed.json").read_text())["results"]
    assert record["model"] == "ddpm" and record["images_per_s"] > 0
    assert record["settings"] == {"classifier_scale": 6.0}  # what was timed, recorded


def test_classifier_training_length_in_epochs_is_stated_as_steps(tmp_path):
    from genbench.benchmarks.plan import resolve
    from genbench.benchmarks.spec import read_spec

    spec = tmp_path / "s.toml"
    train = "[classifier.train]\nepochs = 2\nbatch_size = 64\n"
    spec.write_text(CLASSIFIER_SPEC.format(classifier=train, checkpoint=""))
    # 2 epochs of the 1437 digits training images at 64 a step
    assert resolve(*read_spec(str(spec))).classifier.train.steps == round(2 * 1437 / 64)


def test_a_classifier_of_another_image_size_is_refused_when_guiding():
    """A model whose size is only known once built (e.g. from a pretrained UNet) meets a
    classifier of another size: guided sampling refuses it, unguided sampling is fine."""
    gen = _ddpm()
    gen.classifier = NoisyClassifier(
        ClassifierConfig(channels=8), DataShape(DIGITS.channels, 8, DIGITS.num_classes), CPU
    )
    labels = torch.tensor([1, 2])
    gen.sample([0, 1], labels, DDPMSettings(classifier_scale=0.0))
    with pytest.raises(ValueError, match="learned 8 px images and this model samples 16 px"):
        gen.sample([0, 1], labels, DDPMSettings(classifier_scale=1.0))


def test_a_guided_trajectory_shows_the_guided_prediction():
    """The trajectory of a guided DDIM run ends at its sample bit for bit (the x0 of the
    guided eps), not at the unguided prediction."""
    gen = _ddpm()
    labels, seeds = torch.tensor([1, 2]), [0, 1]
    guided = DDPMSettings(steps="ddim5", classifier_scale=4.0)
    images = gen.sample(seeds, labels, guided)
    assert torch.equal(gen.trajectory(seeds, labels, guided)[-1].x0.clamp(-1, 1), images)
    plain = gen.trajectory(seeds, labels, DDPMSettings(steps="ddim5", classifier_scale=0.0))
    assert not torch.equal(plain[-1].x0.clamp(-1, 1), images)


def test_a_pretrained_unet_of_another_size_meets_the_classifier_before_training(cli, tmp_path):
    """The spec sets no image_size, but the pretrained UNet is for 8 px: the run stops with
    a one-line usage error when the classifier is attached, before training."""
    from tests.test_ddpm import _save_tiny_unet

    _save_tiny_unet(tmp_path / "unet8", image_size=8)
    text = CLASSIFIER_SPEC.format(classifier="[classifier.train]\nsteps = 2\n", checkpoint="")
    config = text[text.index("[models.ddpm.config]") :]
    text = text.replace(
        config,
        f'[models.ddpm.config]\nnum_timesteps = 50\npretrained = "{tmp_path / "unet8"}"\n',
    )
    spec = tmp_path / "cg.toml"
    spec.write_text(text)
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 2, result.err
    assert result.err.strip().splitlines()[-1] == (
        "bench: error: models.ddpm: classifier_scale: the guidance classifier learned 16 px "
        "images and this model samples 8 px; sample at 16 px or drop classifier_scale"
    )
    (run,) = out.iterdir()
    assert not (run / "ddpm" / "train_log.jsonl").exists()  # stopped before training
