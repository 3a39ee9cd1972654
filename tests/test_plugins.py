"""Plugins without forking genbench: a generator package found through its entry point (its
own ``pyproject.toml`` and installed metadata, put on ``sys.path`` as pip would install it)
or named as ``module:Class`` in a spec; ``bench list`` says where each came from, and a
broken plugin is one line naming it while the others still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genbench.core.registry import Registry
from genbench.data.datasets import DATASETS
from genbench.generators import GENERATORS

PLUGIN = '''
"""A plugin generator written against genbench's public interface only: each pixel an
independent Gaussian whose mean and log-std are learned by maximum likelihood."""

import math

import torch
from torch import nn

from genbench.generators import Generator, GeneratorConfig
from genbench.generators.training import Loss, OptimizerSpec, Phase, Training


class PixelsConfig(GeneratorConfig):
    lr: float = 0.05


class Pixels(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(shape))
        self.log_std = nn.Parameter(torch.zeros(shape))


class GaussianPixels(Generator):
    Config = PixelsConfig

    def __init__(self, config, data, device):
        super().__init__(config, data, device)
        shape = (data.channels, data.image_size, data.image_size)
        self.net = Pixels(shape).to(self.device)

    def training(self):
        lr = self.config.lr
        opt = OptimizerSpec(("net",), lambda params: torch.optim.Adam(params, lr=lr), lr)
        return Training({"opt": opt}, [Phase("fit", "opt", self._draw, self._loss)])

    def _draw(self, batch):
        return batch.images.to(self.device)

    def _loss(self, nets, x):
        net = nets["net"]
        z = (x - net.mean) * torch.exp(-net.log_std)
        nll = 0.5 * z.square() + net.log_std + 0.5 * math.log(2 * math.pi)
        return Loss(nll.flatten(1).mean(1))

    def sample(self, seeds, labels=None, settings=None):
        noise = torch.stack([
            torch.randn(self.net.mean.shape, generator=torch.Generator().manual_seed(int(s)))
            for s in seeds
        ]).to(self.device)
        with torch.no_grad():
            return (self.net.mean + noise * self.net.log_std.exp()).clamp(-1, 1)

    def nfe(self, settings=None):
        return 1

    def modules(self):
        return {"net": self.net}


class WidePixels(GaussianPixels):
    """Not in the entry points: reachable as genbench_pixels:WidePixels from a spec."""


NOT_A_GENERATOR = object()
'''

PYPROJECT = """
[project]
name = "genbench-pixels"
version = "0.1"
dependencies = ["genbench"]

[project.entry-points."genbench.generators"]
pixels = "genbench_pixels:GaussianPixels"
"""


def _dist_info(root: Path, name: str, version: str, entry_points: str) -> None:
    """The metadata pip writes when it installs a distribution (what entry points are
    discovered from)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points + "\n")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two plugin distributions on ``sys.path``: genbench-pixels (a working generator) and
    genbench-broken (an entry point whose module fails to import); the registries start
    afresh and are restored after the test."""
    site = tmp_path / "site"
    package = site / "genbench_pixels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN)
    (site / "pyproject.toml").write_text(PYPROJECT)  # the plugin's own project file
    group = "[genbench.generators]\n"
    _dist_info(site, "genbench-pixels", "0.1", group + "pixels = genbench_pixels:GaussianPixels")
    (site / "genbench_broken.py").write_text("raise ImportError('needs libfoo 2.0')\n")
    _dist_info(site, "genbench-broken", "0.3", group + "broken = genbench_broken:Gen")
    monkeypatch.syspath_prepend(str(site))
    for registry in (GENERATORS, DATASETS):
        _fresh(registry, monkeypatch)
    for module in ("genbench_pixels", "genbench_broken"):
        monkeypatch.delitem(__import__("sys").modules, module, raising=False)
    return site


def _fresh(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.setattr(registry, "_origins", dict(registry._origins))
    monkeypatch.setattr(registry, "_plugins", "pending")
    monkeypatch.setattr(registry, "broken", [])


def test_bench_list_shows_the_plugin_and_where_it_came_from(cli, plugins: Path) -> None:
    result = cli("list")
    assert result.code == 0, result.err
    generators = next(line for line in result.out.splitlines() if line.startswith("generators:"))
    assert "pixels [plugin genbench-pixels 0.1 (genbench_pixels:GaussianPixels)]" in generators
    assert "dcgan (alias gan)," in generators and "[built-in]" not in generators
    # The broken plugin: one line naming it, its distribution and the cause; the rest load.
    warning = result.err.strip()
    assert "\n" not in warning and "generator plugin 'broken'" in warning
    assert "genbench-broken 0.3" in warning and "needs libfoo 2.0" in warning
    assert "broken" not in GENERATORS and GENERATORS.broken == [warning.split("warning: ")[1]]


SPEC = """
[benchmark]
name = "plug"
dataset = "digits"
device = "cpu"

[train]
steps = 60
batch_size = 64
log_every = 20

[sample]
num_samples = 64
batch_size = 64
grid_size = 16

[evaluate]
extractor = "digits"
metrics = ["fid", "is"]

[timing]
repeats = 2
warmup = 1
batch_size = 16

[models.pix]
generator = "pixels"

[models.wide]
generator = "genbench_pixels:WidePixels"
config = {{ lr = {lr} }}
"""


def test_plugin_generators_run_in_bench_run(cli, plugins: Path, tmp_path: Path) -> None:
    spec = tmp_path / "plug.toml"
    spec.write_text(SPEC.format(lr=0.1))
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 0, result.err
    (run,) = out.iterdir()
    from safetensors.torch import load_file

    from genbench.data.datasets import Digits

    data_mean = Digits.tensors("train")[0].mean(0)
    for model, generator in (("pix", "pixels"), ("wide", "genbench_pixels:WidePixels")):
        record = json.loads((run / model / "metrics.json").read_text())
        assert record["generator"] == generator and record["train_steps"] == 60
        assert record["metrics"]["fid"]["value"] > 0 and record["nfe"] == 1
        # Trained by the harness's Trainer: the mean moved from zero towards the data's.
        mean = load_file(run / model / "checkpoint.safetensors")["net.mean"]
        assert (mean - data_mean).abs().mean() < 0.5 * data_mean.abs().mean()
    resolved = (run / "spec.toml").read_text()
    assert 'generator = "genbench_pixels:WidePixels"' in resolved
    assert GENERATORS.origin("genbench_pixels:WidePixels") == "genbench_pixels:WidePixels"


@pytest.mark.parametrize(
    ("generator", "expected"),
    [
        ("genbench_absent:Gen", "cannot import genbench_absent for generator"),
        ("genbench_pixels:Missing", "module genbench_pixels has no 'Missing'"),
        ("genbench_pixels:NOT_A_GENERATOR", "must be a Generator"),
        ("genbench_pixels:Gaussian Pixels", "unknown generator 'genbench_pixels:Gaussian Pixels'"),
    ],
)
def test_bad_module_paths_are_one_line_spec_errors(
    cli, plugins: Path, tmp_path: Path, generator: str, expected: str
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.format(lr=0.1).replace('"genbench_pixels:WidePixels"', f'"{generator}"'))
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 2 and expected in result.err, result.err
    assert "models.wide.generator" in result.err
    assert len(result.err.strip().splitlines()) <= 2  # the broken plugin's warning, the error
    assert not out.exists()
