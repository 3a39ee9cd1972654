"""Chosen class labels: ``[sample] labels`` / ``--labels``, the per-class sample grid."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image

from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.sampling import grid_by_class, labels_for
from genbench.benchmarks.spec import read_spec
from genbench.core.errors import SpecError
from genbench.generators import DataShape
from genbench.generators.dcgan import DCGAN, DCGANConfig
from genbench.generators.edm import EDM, EDMConfig
from tests.test_edm import TINY

CPU = torch.device("cpu")
DIGITS = DataShape(channels=1, image_size=16, num_classes=10)
EDM_TINY = (
    "{ channels = 8, channel_mult = [1, 2], num_res_blocks = 1, attn_resolutions = [], "
    "dropout = 0.0, norm_groups = 4, time_embed_dim = 16, steps = 2 }"
)


def _edm() -> EDM:
    torch.manual_seed(0)
    config = EDMConfig(**TINY)
    return EDM(config, DIGITS, CPU)


def test_labels_cycle_over_the_seeds() -> None:
    gen = _edm()
    seeds = [0, 1, 2, 3, 4, 5, 13]
    assert labels_for(gen, seeds, [1, 3, 5]).tolist() == [1, 3, 5, 1, 3, 5, 3]
    assert labels_for(gen, seeds).tolist() == [0, 1, 2, 3, 4, 5, 3]
    dcgan = DCGAN(DCGANConfig(ngf=8, ndf=8, nz=16), DIGITS, CPU)
    assert labels_for(dcgan, seeds, [1, 3]) is None  # unconditional: no labels


def test_grid_has_one_row_per_class_padded_with_white() -> None:
    images = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 2, 2) / 10
    grid, width = grid_by_class(images, torch.tensor([3, 1, 3, 5, 1]))
    assert width == 2 and grid.shape == (6, 1, 2, 2)
    # rows in order of first appearance: 3 (images 0, 2), 1 (1, 4), 5 (3, then white)
    assert grid[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 0.1, 0.4, 0.3, 1.0])


def _smoke(**overrides):
    return resolve(*read_spec("smoke"), Overrides(**overrides))


def test_labels_override_reaches_the_conditional_models_only() -> None:
    plan = _smoke(labels=[1, 3])
    conditional = {
        n
        for n, m in plan.models.items()
        if m.generator_class.is_conditional(m.config, m.data_shape)
    }
    assert conditional  # the smoke spec has class-conditional models (EDM, VDPM)
    for name, model in plan.models.items():
        assert model.sample.labels == ([1, 3] if name in conditional else None)
    resolved = tomllib.loads(plan.to_toml())["models"]  # the run's spec.toml keeps them
    assert {n for n, m in resolved.items() if m["sample"].get("labels") == [1, 3]} == conditional


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": [1, 10]}, r"models\.\w+\.sample\.labels: 10 is not a class of this data set"),
        ({"labels": [2], "models": ["dcgan"]}, "--labels: no model of this run is class-cond"),
    ],
)
def test_bad_labels_are_spec_errors(overrides, message) -> None:
    with pytest.raises(SpecError, match=message):
        _smoke(**overrides)


def test_labels_on_an_unconditional_model_in_a_spec_are_refused(tiny_spec) -> None:
    path = tiny_spec(steps=0, num_samples=20)
    path.write_text(path.read_text().replace("grid_size = 16", "grid_size = 16\nlabels = [1]"))
    with pytest.raises(SpecError, match=r"models\.dcgan\.sample\.labels: this model is not"):
        resolve(*read_spec(str(path)), Overrides())


def test_cli_labels_must_be_class_numbers(cli) -> None:
    result = cli("run", "smoke", "--labels", "1,x", "--dry-run")
    assert result.code == 2 and "--labels: 'x' is not a class number" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_run_samples_the_chosen_labels_and_records_them(cli, tiny_spec, tmp_path, monkeypatch):
    extra = f'\n[models.edm]\ngenerator = "edm"\nconfig = {EDM_TINY}\n'
    spec = tiny_spec(steps=0, num_samples=20, extra=extra)
    seen: dict[int, list[int]] = {}  # seed -> the labels it was sampled with
    original = EDM.sample

    def recording(self, seeds, labels=None, settings=None):
        for seed, label in zip(seeds, labels.tolist(), strict=True):
            seen.setdefault(seed, []).append(label)
        return original(self, seeds, labels, settings)

    monkeypatch.setattr(EDM, "sample", recording)
    out = tmp_path / "runs"
    args = ("run", str(spec), "--models", "edm", "--out", str(out))
    result = cli(*args, "--labels", "2,7")
    assert result.code == 0, result.err
    # Seeds 0 .. 19 are evaluated (the timing samples some of them again, with the same labels).
    assert sorted(seen) == list(range(20))
    assert all(set(seen[s]) == {[2, 7][s % 2]} for s in seen)
    (run,) = out.iterdir()
    metrics = json.loads((run / "edm" / "metrics.json").read_text())
    assert metrics["sample"]["labels"] == [2, 7] and metrics["protocol"]["labels"] == [2, 7]
    # 16 grid images, 8 per class: 2 rows of 8 digits enlarged to 64 px with 2 px padding
    with Image.open(run / "edm" / "samples.png") as grid:
        assert grid.size == (8 * 64 + 9 * 2, 2 * 64 + 3 * 2)

    # Without labels a conditional model samples every class, one grid row each.
    seen.clear()
    out2 = tmp_path / "runs2"
    assert cli("run", str(spec), "--models", "edm", "--out", str(out2)).code == 0
    assert sorted(seen) == list(range(20)) and all(set(seen[s]) == {s % 10} for s in seen)
    (run2,) = out2.iterdir()
    metrics2 = json.loads((run2 / "edm" / "metrics.json").read_text())
    assert metrics2["sample"].get("labels") is None and metrics2["protocol"].get("labels") is None
    with Image.open(Path(run2) / "edm" / "samples.png") as grid:
        assert grid.size == (2 * 64 + 3 * 2, 10 * 64 + 11 * 2)
