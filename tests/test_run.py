"""End-to-end ``bench run`` on tiny settings: files written, checkpoint reuse, report."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.trainkit import trained_and_untrained


def _run_dir(out: Path) -> Path:
    (run,) = list(out.iterdir())
    return run


def test_run_writes_complete_results(cli, tiny_spec, tmp_path):
    out = tmp_path / "runs"
    result = cli("run", str(tiny_spec(steps=12, num_samples=120)), "--out", str(out))
    assert result.code == 0, result.err
    run = _run_dir(out)
    assert run.name.startswith("tiny-")
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "complete" and status["models"] == ["dcgan"]
    env = json.loads((run / "environment.json").read_text())
    assert env["torch"] and env["device"] == "cpu" and env["world_size"] == 1
    resolved = tomllib.loads((run / "spec.toml").read_text())
    assert resolved["models"]["dcgan"]["train"]["steps"] == 12

    model = run / "dcgan"
    log = [json.loads(line) for line in (model / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 12]
    assert all("loss_d" in r and "loss_g" in r for r in log)

    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["train_steps"] == 12 and metrics["nfe"] == 1
    assert metrics["parameters"] > 0
    assert metrics["sample"]["num_samples"] == 120 and metrics["sample"]["seeds"] == "0-119"
    assert metrics["metrics"]["fid"]["value"] > 0
    assert 1.0 <= metrics["metrics"]["is"]["value"] <= 10.0
    proto = metrics["protocol"]
    assert proto["extractor"] == "digits_cnn" and proto["num_samples"] == 120
    assert proto["seeds"] == "0-119"
    ref = proto["reference"]
    assert (ref["dataset"], ref["split"], ref["count"]) == ("digits", "train", 1437)
    assert len(ref["stats_sha256"]) == 64

    timing = json.loads((model / "timing.json").read_text())
    assert len(timing["raw_s"]) == 2 and len(timing["warmup_s"]) == 1
    assert timing["median_s"] > 0 and timing["images_per_s"] == pytest.approx(
        16 / timing["median_s"]
    )
    assert timing["s_per_50k"] == pytest.approx(50_000 / timing["images_per_s"])

    with Image.open(model / "samples.png") as img:
        img.verify()
    state = load_file(str(model / "checkpoint.safetensors"))
    assert any(k.startswith("G.") for k in state)

    # the printed table and `bench report` agree with the files
    assert "| dcgan |" in result.out.replace(run.name + " ", "")
    report = cli("report", str(run))
    assert report.code == 0
    assert f"{metrics['metrics']['fid']['value']:,.2f}" in report.out


def test_checkpoint_is_evaluated_without_training(cli, tiny_spec, tmp_path, monkeypatch):
    from genbench.core import manifest
    from genbench.core.io import file_sha256

    spec = str(tiny_spec(steps=8, num_samples=64))
    first = tmp_path / "a"
    assert cli("run", spec, "--out", str(first)).code == 0
    ckpt = _run_dir(first) / "dcgan" / "checkpoint.safetensors"
    # As if vendor/checkpoints.toml listed this file: the run names the entry.
    monkeypatch.setattr(manifest, "_known", lambda: {file_sha256(ckpt): "tiny-dcgan"})
    second = tmp_path / "b"
    result = cli("run", spec, "--out", str(second), "--checkpoint", f"dcgan={ckpt}")
    assert result.code == 0, result.err
    a = json.loads((_run_dir(first) / "dcgan" / "metrics.json").read_text())
    b = json.loads((_run_dir(second) / "dcgan" / "metrics.json").read_text())
    assert b["train_steps"] == 0 and b["checkpoint_source"] == str(ckpt)
    assert (b["checkpoint_sha256"], b["checkpoint_id"]) == (file_sha256(ckpt), "tiny-dcgan")
    assert a["checkpoint_sha256"] is None  # trained here: nothing to identify
    # same weights, same seeds: the same images, hence the same FID
    assert b["metrics"]["fid"]["value"] == pytest.approx(a["metrics"]["fid"]["value"], rel=1e-6)
    assert not (_run_dir(second) / "dcgan" / "train_log.jsonl").exists()


def test_checkpoint_of_wrong_shape_is_a_clear_error(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=2, num_samples=64)
    first = tmp_path / "a"
    assert cli("run", str(spec), "--out", str(first)).code == 0
    ckpt = _run_dir(first) / "dcgan" / "checkpoint.safetensors"
    wider = tmp_path / "wider.toml"
    wider.write_text(spec.read_text().replace("ngf = 8", "ngf = 16"))
    result = cli("run", str(wider), "--out", str(tmp_path / "b"), "--checkpoint", f"dcgan={ckpt}")
    assert result.code == 2
    assert "does not fit this model's config" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_report_compares_runs_and_rejects_non_runs(cli, tiny_spec, tmp_path):
    spec = str(tiny_spec(steps=3, num_samples=64))
    out = tmp_path / "runs"
    assert cli("run", spec, "--out", str(out), "--train-steps", "0").code == 0
    assert cli("run", spec, "--out", str(out)).code == 0
    runs = sorted(out.iterdir())
    report = cli("report", *map(str, runs))
    assert report.code == 0
    starts = tuple(f"| {run.name.rsplit('-', 1)[-1]} |" for run in runs)  # each run's tag

    def rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(starts)]

    assert len(rows(report.out)) == 2
    assert {row.split(" | ")[2] for row in rows(report.out)} == {"0", "3"}  # train steps
    assert rows(cli("report", str(out)).out) == rows(report.out)  # the folder: the same runs
    bad = cli("report", str(runs[0] / "dcgan"))
    assert bad.code == 2 and "not a genbench run directory" in bad.err


def test_same_seed_same_model_other_seed_other_model(cli, tiny_spec, tmp_path):
    spec = str(tiny_spec(steps=6, num_samples=64))
    fids = []
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        assert cli("run", spec, "--out", str(tmp_path / name), "--seed", seed).code == 0
        state = load_file(str(_run_dir(tmp_path / name) / "dcgan" / "checkpoint.safetensors"))
        fids.append(state)
    assert all(torch.equal(fids[0][k], fids[1][k]) for k in fids[0])
    assert not all(torch.equal(fids[0][k], fids[2][k]) for k in fids[0])


def test_missing_data_is_a_usage_error_before_anything_is_written(cli, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    spec = tmp_path / "c.toml"
    spec.write_text(
        '[benchmark]\nname = "c"\ndataset = "cifar10"\ndevice = "cpu"\n'
        '[evaluate]\nextractor = "digits"\n[models.gan]\ngenerator = "dcgan"\n'
    )
    out = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("run", str(spec), "--out", str(out), "--data-root", str(empty))
    assert result.code == 2
    assert "--data-root" in result.err and len(result.err.strip().splitlines()) == 1
    assert not out.exists()


def test_batch_larger_than_the_data_is_a_usage_error(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=2).read_text().replace("batch_size = 32", "batch_size = 5000")
    path = tmp_path / "big.toml"
    path.write_text(spec)
    out = tmp_path / "runs"
    result = cli("run", str(path), "--out", str(out))
    assert result.code == 2
    assert "train.batch_size: 5000 exceeds the 1437 training images" in result.err
    assert not out.exists()


@pytest.mark.slow
def test_smoke_dcgan_trained_fid_at_most_half_of_untrained(tmp_path):
    """The acceptance claim of the skeleton, on the shipped smoke settings (fewer steps)."""
    runs = trained_and_untrained("smoke", "dcgan", 500, 300, tmp_path)
    assert runs[500]["metrics"]["fid"]["value"] <= 0.5 * runs[0]["metrics"]["fid"]["value"]


@pytest.mark.slow
def test_cifar10_spec_end_to_end_on_local_files(cli, tmp_path, monkeypatch):
    """`bench run cifar10` wiring: --data-root, --inception-weights, 64 px DCGAN, Inception."""
    from tests.test_datasets import accept_fake_md5s, write_fake_cifar
    from tests.test_inception import random_fid_inception_state_dict

    fake = write_fake_cifar(tmp_path / "data")
    accept_fake_md5s(monkeypatch, fake)
    weights = tmp_path / "inception.pth"
    torch.save(random_fid_inception_state_dict(), weights)
    out = tmp_path / "runs"
    common = ["run", "cifar10", "--models", "gan", "--device", "cpu", "--out", str(out)]
    common += ["--train-steps", "0", "--num-samples", "20", "--data-root", str(tmp_path / "data")]
    missing = cli(*common, "--inception-weights", str(tmp_path / "none.pth"))
    assert missing.code == 2 and "no such file" in missing.err and not out.exists()

    result = cli(*common, "--inception-weights", str(weights))
    assert result.code == 0, result.err
    model = _run_dir(out) / "dcgan"
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["config"]["image_size"] == 64
    proto = metrics["protocol"]
    assert proto["extractor"] == "pytorch_fid_inception_v3" and proto["feature_dim"] == 2048
    assert proto["reference"]["count"] == len(fake.labels["train"])
    assert metrics["metrics"]["fid"]["value"] > 0
    with Image.open(model / "samples.png") as img:
        assert img.size[0] >= 64 * 4  # 20 images of 64 px in a grid


def test_report_marks_values_from_different_protocols(cli, tiny_spec, tmp_path):
    out = tmp_path / "runs"
    spec = str(tiny_spec(steps=0, num_samples=64))
    assert cli("run", spec, "--out", str(out)).code == 0
    assert cli("run", spec, "--out", str(out), "--num-samples", "80").code == 0
    runs = sorted(out.iterdir())
    report = cli("report", *map(str, runs)).out
    starts = tuple(f"| {run.name.rsplit('-', 1)[-1]} |" for run in runs)  # each run's tag
    rows = [line for line in report.splitlines() if line.startswith(starts)]
    assert len(rows) == 2
    assert {"[a]" in rows[0] or "[a]" in rows[1], "[b]" in rows[0] or "[b]" in rows[1]} == {True}
    assert "different evaluation protocols" in report
    assert "num_samples=64" in report and "num_samples=80" in report
