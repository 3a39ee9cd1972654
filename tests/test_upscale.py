"""Upscaling after sampling (``[sample] upscale``): a spandrel-loaded super-resolution network
as its own timed stage, evaluated at the upscaled resolution, recorded in the protocol.

The weights are an ESRGAN (Real-ESRGAN's RRDB architecture) with random weights, built with
spandrel's own architecture class and saved as the usual ``.pth`` state dict."""

from __future__ import annotations

import json

import pytest
import torch
from spandrel.architectures.ESRGAN import ESRGAN

from genbench.benchmarks.upscale import Upscaler
from genbench.core.errors import GenbenchError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    path = tmp_path_factory.mktemp("sr") / "tiny_x4.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_upscaler_loads_the_file_and_upscales_grey_images(esrgan):
    path, net = esrgan
    up = Upscaler(path, CPU, channels=1)
    assert up.scale == 4 and up.describe() == f"ESRGAN x4 sha256:{up.sha256[:16]}"
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    out = up(images)
    assert out.shape == (3, 1, 64, 64) and out.min() >= -1 and out.max() <= 1
    with torch.no_grad():  # grey in as three equal channels, the mean out
        expected = net(((images + 1) / 2).expand(-1, 3, -1, -1)).clamp(0, 1).mean(1, True)
    torch.testing.assert_close(out, expected * 2 - 1, rtol=1e-5, atol=1e-5)
    assert up.seconds > 0


def test_a_file_spandrel_cannot_read_is_a_one_line_error(tmp_path):
    bad = tmp_path / "junk.pth"
    torch.save({"not.a.model": torch.zeros(3)}, bad)
    with pytest.raises(GenbenchError, match="is no upscaler spandrel can load") as info:
        Upscaler(bad, CPU, channels=3)
    assert "\n" not in str(info.value)


def test_run_evaluates_upscaled_samples_against_upscaled_references(
    cli, tiny_spec, esrgan, tmp_path
):
    path, _ = esrgan
    extra = (
        '\n[models.gan-x4]\ngenerator = "dcgan"\nconfig = { ngf = 8, ndf = 8, nz = 16 }\n'
        f'sample = {{ upscale = "{path}" }}\n'
    )
    spec = tiny_spec(steps=0, num_samples=20, extra=extra)
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 0, result.err
    (run,) = out.iterdir()
    plain = json.loads((run / "dcgan" / "metrics.json").read_text())
    up = json.loads((run / "gan-x4" / "metrics.json").read_text())
    assert up["protocol"]["upscale"].startswith("ESRGAN x4 sha256:")
    assert up["protocol"]["reference"]["resize"] == "bicubic 16->64"
    assert "upscale" not in plain["protocol"] and "resize" not in plain["protocol"]["reference"]
    assert up["sample"]["upscale_seconds"] > 0 and up["sample"]["seconds"] > 0
    # the same untrained DCGAN (same seed) scores differently once upscaled: another protocol
    assert up["metrics"]["fid"]["value"] != plain["metrics"]["fid"]["value"]
    # the report says the two FIDs were measured under different protocols
    assert "upscale" in (run / "report.md").read_text()


def test_a_missing_upscaler_file_is_a_usage_error(cli, tiny_spec, tmp_path):
    missing = tmp_path / "none.pth"
    spec = tiny_spec(steps=0, num_samples=20)
    spec.write_text(
        spec.read_text().replace("grid_size = 16", f'grid_size = 16\nupscale = "{missing}"')
    )
    result = cli("run", str(spec), "--dry-run")
    assert result.code == 2 and f"sample.upscale: no such file: {missing}" in result.err
