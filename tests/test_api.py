"""The Python API: the README's example runs as written and gives ``bench eval``'s FID;
``evaluate`` takes every kind of input; ``build``, ``load_spec``, ``run`` and ``load_run``."""

from __future__ import annotations

import io
import re
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.utils import save_image

import genbench
from genbench.data.datasets import Digits
from genbench.eval.inception import WEIGHTS_ENV
from genbench.generators import Batch
from genbench.store.records import EvalResult
from tests.test_datasets import accept_fake_md5s, write_fake_cifar
from tests.test_inception import random_fid_inception_state_dict

ROOT = Path(__file__).resolve().parent.parent


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_example_runs_and_equals_bench_eval(cli, tmp_path, monkeypatch):
    """The README's example, as written, in a folder with a samples/ folder, CIFAR-10 and
    the Inception weights found where a user would put them (here: small stand-ins in the
    same formats); its FID is the one `bench eval` gives on the same inputs."""
    fake = write_fake_cifar(tmp_path / "data")
    accept_fake_md5s(monkeypatch, fake)
    weights = tmp_path / "inception.pth"
    torch.save(random_fid_inception_state_dict(), weights)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    work = tmp_path / "work"
    (work / "samples").mkdir(parents=True)
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for i, image in enumerate(images):
        save_image(image, work / "samples" / f"{i:03d}.png", normalize=True, value_range=(-1, 1))
    monkeypatch.chdir(work)

    namespace: dict = {}
    printed = io.StringIO()
    with redirect_stdout(printed):
        exec(compile(_readme_example(), "README.md", "exec"), namespace)
    result, run = namespace["result"], namespace["run"]
    assert isinstance(result, EvalResult) and result.protocol.num_samples == 12
    assert result.protocol.reference.dataset == "cifar10"
    assert f"FID {result.value('fid'):.2f}" in printed.getvalue()
    assert run["dcgan"].metrics.train_steps == 200 and run.path.resolve().parent == work / "runs"
    assert genbench.load_run(run.path)["dcgan"].value("fid") == run["dcgan"].value("fid")

    out = work / "eval.json"
    cli_result = cli("eval", "cifar10:train", "samples", "--metrics", "fid,is", "--out", str(out))
    assert cli_result.code == 0, cli_result.err
    from_cli = EvalResult.model_validate_json(out.read_text())
    assert from_cli.value("fid") == pytest.approx(result.value("fid"), rel=1e-6)
    assert from_cli.value("is") == pytest.approx(result.value("is"), rel=1e-6)


def _grey(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_evaluate_takes_folders_zips_arrays_tensors_and_callables(tmp_path):
    """The same images as a tensor, a uint8 NHWC array, PNG files in a folder and in a zip,
    and drawn by a callable give the same FID and IS."""
    real, fake = _grey(40, 0), _grey(30, 1)
    u8 = real.add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    folder = tmp_path / "fake"
    folder.mkdir()
    for i, image in enumerate(fake):
        save_image(image, folder / f"{i:02d}.png", normalize=True, value_range=(-1, 1))
    archive = tmp_path / "fake.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for png in sorted(folder.iterdir()):
            z.write(png, f"images/{png.name}")
        z.writestr("notes.txt", "not an image")

    def draw(seeds: list[int]) -> torch.Tensor:
        return fake[seeds[0] : seeds[-1] + 1]

    common = {"extractor": "digits", "device": "cpu", "batch_size": 7, "progress": False}
    real_np = u8.permute(0, 2, 3, 1).numpy()  # NHWC, as images usually are
    results = {
        name: genbench.evaluate(source, real_np, **common, **extra)
        for name, source, extra in [
            ("tensor", fake, {}),
            ("folder", folder, {}),
            ("zip", archive, {}),
            ("callable", draw, {"num_samples": 30}),
        ]
    }
    fids = {name: r.value("fid") for name, r in results.items()}
    assert fids["tensor"] > 0
    for value in fids.values():
        assert value == pytest.approx(fids["tensor"], rel=1e-6)
    assert results["zip"].protocol.fake.zip == str(archive)
    assert results["callable"].protocol.fake.callable.endswith("(seeds 0-29)")
    assert results["tensor"].protocol.reference.count == 40


@pytest.mark.parametrize(
    ("fake", "message"),
    [
        (42, "cannot evaluate a int"),
        (lambda seeds: torch.zeros(len(seeds), 1, 8, 8), "needs num_samples"),
        (np.zeros((3, 5, 5), dtype=np.uint8), "images must be (N, H, W, C) or (N, C, H, W)"),
        (torch.full((4, 1, 8, 8), 3.0), "float images must lie in [-1, 1]"),
        ("nowhere/at/all", "nowhere/at/all does not exist"),
    ],
)
def test_evaluate_refuses_bad_input_in_one_line(fake, message):
    with pytest.raises(genbench.GenbenchError) as info:
        genbench.evaluate(fake, _grey(10, 0), extractor="digits", device="cpu", progress=False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_build_gives_a_generator_to_train_and_sample():
    config = {"channels": 8, "channel_mult": [1, 2], "attn_resolutions": [], "norm_groups": 4}
    gen = genbench.build("ddpm", config={**config, "num_timesteps": 20, "warmup_steps": 0})
    assert gen.data.image_size == 16 and gen.config.num_timesteps == 20
    images, labels = Digits.tensors("train")
    before = gen.sample(range(4), settings=gen.Settings(steps="ddim5"))
    trainer = genbench.trainer(gen, batch_size=16, steps=1)
    trainer.train_step(Batch(images[:16], labels[:16]))
    assert np.isfinite(trainer.read_logs()["loss"]) and trainer.finished()
    after = gen.sample(range(4), settings=gen.Settings(steps="ddim5"))
    assert after.shape == (4, 1, 16, 16) and not torch.equal(before, after)
    same = genbench.build("ddpm", config={**config, "num_timesteps": 20, "warmup_steps": 0})
    torch.testing.assert_close(same.sample(range(4), settings=same.Settings(steps="ddim5")), before)
    with pytest.raises(genbench.GenbenchError, match="unknown generator 'vae'"):
        genbench.build("vae")
    with pytest.raises(genbench.GenbenchError, match=r"train\.grad_accum: .*greater than or"):
        genbench.trainer(gen, batch_size=16, grad_accum=0)
    with pytest.raises(genbench.GenbenchError, match="cannot be cut into 32 micro-batches"):
        genbench.trainer(gen, batch_size=16, grad_accum=32)


def test_load_spec_applies_overrides_and_checks_settings():
    plan = genbench.load_spec("smoke", models=["ddpm", "gan"], train_steps=7, num_samples=20)
    assert list(plan.models) == ["ddpm", "dcgan"]
    assert {m.train.steps for m in plan.models.values()} == {7}
    assert plan.models["ddpm"].settings.steps is None  # the config's sample_steps
    assert "schema_version = 3" in plan.to_toml()
    with pytest.raises(genbench.GenbenchError, match="unknown model 'vae'"):
        genbench.load_spec("smoke", models=["vae"])
