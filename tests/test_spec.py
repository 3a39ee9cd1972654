"""Spec loading, validation errors (exit 2, one line, nothing written), overrides, dry run."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.spec import available_specs, read_spec
from genbench.core.errors import SpecError
from genbench.generators import GENERATORS


def _plan(name: str, **ov):
    spec, source = read_spec(name)
    return resolve(spec, source, Overrides(**ov))


def test_shipped_specs_resolve():
    assert {"smoke", "extras", "cifar10"} <= set(available_specs())
    smoke, extras = _plan("smoke"), _plan("extras")
    from genbench.generators import GENERATORS

    # smoke and extras run every registered generator, each once, on the same settings
    first, later = ({m.generator for m in p.models.values()} for p in (smoke, extras))
    assert first | later == set(GENERATORS.names()) and not first & later
    for plan in (smoke, extras):
        assert plan.benchmark.dataset == "digits" and plan.evaluate.extractor == "digits"
    assert extras.timing == smoke.timing and extras.evaluate == smoke.evaluate


def test_cifar10_dcgan_settings():
    plan = _plan("cifar10", models=["gan"])
    m = plan.models["dcgan"]
    c = m.config
    assert (c.image_size, c.nz, c.ngf, c.ndf) == (64, 100, 64, 64)
    assert (c.g_lr, c.d_lr, c.beta1) == (1.6e-4, 1.25e-4, 0.5)
    assert m.train.batch_size == 128
    # 50 epochs of 50,000 images at batch 128, stated as steps in the resolved plan
    assert m.train.steps == round(50 * 50_000 / 128)


def test_resolved_spec_round_trips(tmp_path: Path):
    plan = _plan("smoke", train_steps=3, num_samples=50, seed=7)
    text = plan.to_toml()
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    again = _plan(str(path))
    assert again.to_dict() == plan.to_dict()
    data = tomllib.loads(text)
    assert data["benchmark"]["seed"] == 7
    for model in data["models"].values():
        assert model["train"]["steps"] == 3 and model["sample"]["num_samples"] == 50
        # Defaults are filled in: every field of the generator's Config that has a value.
        config = GENERATORS.get(model["generator"]).Config(**model["config"])
        assert model["config"] == config.model_dump(mode="json", exclude_none=True)
        assert len(model["config"]) >= 3


def test_models_alias_and_selection():
    assert list(_plan("smoke", models=["gan"]).models) == ["dcgan"]
    assert list(_plan("smoke", models=["dcgan"]).models) == ["dcgan"]
    with pytest.raises(SpecError, match=r"unknown model 'nope'; valid choices: dcgan"):
        _plan("smoke", models=["nope"])


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return str(path)


BASE = """
[benchmark]
name = "t"
[models.gan]
generator = "dcgan"
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[train]\nstepz = 3\n", "train.stepz: unknown key; valid keys: steps, epochs,"),
        ("[sample]\nnum_samples = -4\n", "sample.num_samples: Input should be greater than"),
        ("[timing]\nprecision = 'fp8'\n", "timing.precision: Input should be 'fp32'"),
        ("[models.gan.config]\nnzz = 3\n", "models.gan.config.nzz: unknown key; valid keys:"),
        ("[models.gan.config]\nngf = 'wide'\n", "models.gan.config.ngf: Input should be a valid"),
        ("[models.b]\ngenerator = 'vae'\n", "models.b.generator: unknown generator 'vae'; valid"),
        ("[evaluate]\nmetrics = ['fid', 'lpips']\n", "unknown metric 'lpips'; valid choices:"),
        ("[models.gan.train]\nbatch = 3\n", "models.gan.train.batch: unknown key; valid keys:"),
        ("[models.c]\ngenerator = 'gan'\ncheckpoint = 'x.st'\n", "models.c.checkpoint: no such"),
    ],
)
def test_spec_errors_name_the_field(tmp_path, extra, expected):
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(SpecError) as info:
        spec, source = read_spec(path)
        resolve(spec, source)
    assert expected in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_unknown_dataset(tmp_path):
    path = _write(tmp_path, BASE.replace('name = "t"', 'name = "t"\ndataset = "svhn"'))
    with pytest.raises(SpecError, match=r"benchmark.dataset: unknown dataset 'svhn'; valid"):
        resolve(*read_spec(path))


def test_bad_toml_and_missing_spec(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        read_spec(_write(tmp_path, "[benchmark\n"))
    with pytest.raises(SpecError, match=r"valid names: .*smoke"):
        read_spec("no-such-spec")


# ------------------------------------------------------------------- the CLI boundary


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "smoke", "--models", "nope"], "unknown model 'nope'; valid choices: dcgan"),
        (["run", "smoke", "--seed", "abc"], "Invalid value for '--seed'"),
        (["run", "smoke", "--bogus"], "No such option: --bogus"),
        (["run", "smoke", "--device", "cuda:0"], "--device"),
        (["run", "smoke", "--device", "tpu"], "--device"),
        (["run", "smoke", "--train-steps", "-1"], "steps: Input should be greater than"),
        (["run", "nonexistent"], "valid names:"),
        (["run", "smoke", "--num-samples", "5"], "num_samples: 5 is too few for IS"),
        (["run", "smoke", "--checkpoint", "dcgan"], "--checkpoint: expected MODEL=PATH"),
        (["run", "smoke", "--checkpoint", "dcgan=/no/file"], "no such file: /no/file"),
        (["run", "smoke", "--checkpoint", "ddx=/no/file"], "model 'ddx' is not in this run"),
    ],
)
def test_cli_usage_errors_exit_2_one_line_nothing_written(cli, tmp_path, args, expected):
    import torch

    if "cuda:0" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so --device cuda:0 is valid here")
    out = tmp_path / "runs"
    result = cli(*args, "--out", str(out))
    assert result.code == 2, result
    assert expected in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err
    assert not out.exists()


def test_cli_spec_file_error_exit_2(cli, tmp_path):
    path = _write(tmp_path, BASE + "[models.gan.config]\nngff = 3\n")
    out = tmp_path / "runs"
    result = cli("run", path, "--out", str(out))
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "models.gan.config.ngff: unknown key; valid keys: image_size, nz, ngf" in result.err
    assert not out.exists()


def test_dry_run_prints_resolved_spec_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("run", "smoke", "--models", "gan", "--train-steps", "0", "--dry-run")
    assert result.code == 0, result.err
    data = tomllib.loads(result.out)
    assert list(data["models"]) == ["dcgan"]
    assert data["models"]["dcgan"]["train"]["steps"] == 0
    assert data["models"]["dcgan"]["config"]["ngf"] == 32
    assert list(tmp_path.iterdir()) == []


def test_mnist_spec_resolves_on_the_mnist_shape():
    plan = _plan("mnist")
    assert plan.benchmark.dataset == "mnist" and plan.evaluate.extractor == "inception"
    assert set(plan.models) == {"dcgan", "ddpm", "vdpm", "edm", "ddgan"}
    assert {m.data_shape.image_size for m in plan.models.values()} == {32}
    assert plan.models["ddpm"].train.steps == round(20 * 60000 / 128)  # 20 epochs
    fashion = _plan("mnist", dataset="fashion_mnist", models=["ddpm"])
    assert fashion.benchmark.dataset == "fashion_mnist"
    assert (
        _plan("mnist", dataset="emnist", models=["edm"]).models["edm"].data_shape.num_classes == 47
    )
