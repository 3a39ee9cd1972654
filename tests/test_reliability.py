"""Reliability: Ctrl-C is not success, NaN is not a result, a run is complete only with its
reports, bad input is one line (never a traceback) and never a half-made run, a run has one
owner, and random specs never crash ``bench`` (issue: names are not paths, Ctrl-C is not
success, NaN is not a result)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genbench.core.errors import Busy
from genbench.store import files
from tests import spawn
from tests.test_eval_cli import varied_images, write_pngs

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "schema_v1"
DDPM = (
    '\n[models.ddpm]\ngenerator = "ddpm"\ntrain = { steps = 6 }\n'
    "config = { num_timesteps = 10, channels = 8, channel_mult = [1, 2], num_res_blocks = 1, "
    'attn_resolutions = [], norm_groups = 4, warmup_steps = 0, sample_steps = "ddim3" }\n'
)


def _strict_json(path: Path) -> object:
    """Parse as strict JSON: NaN or Infinity (which Python's json writes by default) fail."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _last_line(err: str) -> str:
    """The error line of a command that did work first (its progress bars precede it)."""
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- Ctrl-C


def _interrupt_when(spec: Path, out: Path, trigger: str) -> subprocess.CompletedProcess:
    """Start `bench run`; send SIGINT once file ``trigger`` appears in a model folder (waiting
    on that progress, not on a clock); return how the process ended."""
    proc = spawn.bench("run", str(spec), "--out", str(out))
    while proc.poll() is None and not any(out.glob(f"*/*/{trigger}")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    code = proc.wait()
    return subprocess.CompletedProcess(["bench", "run"], code, "", proc.stderr())


def _values(run_dir: Path) -> dict[str, object]:
    out = {}
    for metrics in sorted(run_dir.glob("*/metrics.json")):
        data = json.loads(metrics.read_text())
        out[data["model"]] = (data["metrics"], data["extra"])
    return out


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_resume_gives_the_uninterrupted_result(
    cli, tiny_spec, tmp_path
):
    spec = tiny_spec(steps=200, num_samples=300, extra=DDPM)
    whole = tmp_path / "whole"
    assert cli("run", str(spec), "--out", str(whole)).code == 0
    (reference,) = whole.iterdir()
    expected = _values(reference)
    assert "bits_per_dim" in expected["ddpm"][1]  # the resumed runs must match it too
    interrupted = 0
    # during training (the log appears at step 5 of 200), sampling (after the checkpoint)
    # and evaluation (after the sample grid: bits/dim, timing)
    for i, trigger in enumerate(("train_log.jsonl", "checkpoint.safetensors", "samples.png")):
        out = tmp_path / f"runs{i}"
        ended = _interrupt_when(spec, out, trigger)
        (run_dir,) = out.iterdir()
        if ended.returncode == 0:
            continue  # the signal came after the last write; nothing to resume
        interrupted += 1
        assert ended.returncode == 130, ended.stderr
        line = _last_line(ended.stderr)
        assert line == f"bench: interrupted; resume with: bench resume {run_dir}"
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
        with files.run_lock(run_dir):  # released on the way out
            pass
        resumed = cli("resume", str(run_dir))
        assert resumed.code == 0, resumed.err
        assert _values(run_dir) == expected  # bits/dim included
    assert interrupted >= 2


def test_ctrl_c_outside_a_run_exits_130(tmp_path):
    code = (
        "import os, signal, sys\n"
        "import genbench.cli as cli\n"
        "cli.app.registered_commands[2].callback = lambda: os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.exit(cli.main(['list']))\n"
    )
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ended.returncode == 130 and _one_line(ended.stderr) == "bench: interrupted"


# --------------------------------------------------------------------------- NaN


def test_a_diverged_model_is_failed_not_a_result(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=20, num_samples=64, extra=DDPM)
    text = spec.read_text().replace("nz = 16 }", "nz = 16, g_lr = 1e30, d_lr = 1e30 }")
    text = text.replace("warmup_steps = 0,", "warmup_steps = 0, lr = 1e30,")
    spec.write_text(text)
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 1
    assert "2 of 2 models failed" in _last_line(result.err)
    (run_dir,) = out.iterdir()
    for model in ("dcgan", "ddpm"):
        metrics = _strict_json(run_dir / model / "metrics.json")
        assert metrics["failure"].startswith(("training diverged", "generated images hold"))
        assert metrics["metrics"] == {} and metrics["protocol"] is None
        assert "diverged at step" in metrics["failure"] or "generated" in metrics["failure"]
        log = run_dir / model / "train_log.jsonl"
        for line in log.read_text().splitlines() if log.exists() else []:
            json.loads(line, parse_constant=lambda token: pytest.fail(f"{token} in the log"))
    assert "bench: dcgan failed: training diverged at step" in result.err
    report = (run_dir / "report.md").read_text()
    assert report.count("| failed |") == 2 and "Failed, no result: dcgan" in report
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    again = cli("resume", str(run_dir))  # complete, but not a success either
    assert again.code == 1 and "models failed: dcgan, ddpm" in _one_line(again.err)


def test_infinite_settings_are_spec_errors(cli, tiny_spec, tmp_path):
    spec = tiny_spec()
    for old, new in (("nz = 16 }", "nz = 16, g_lr = inf }"), ("steps = 10", "epochs = inf")):
        bad = tmp_path / "bad.toml"
        bad.write_text(spec.read_text().replace(old, new))
        result = cli("run", str(bad), "--out", str(tmp_path / "runs"))
        assert result.code == 2 and "finite number" in _one_line(result.err)
    assert not (tmp_path / "runs").exists()


def test_bench_eval_refuses_non_finite_images(cli, tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (20, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "real.npz", images)
    images[3, 0, 4, 4] = np.nan
    np.savez(tmp_path / "fake.npz", images)
    args = ["--extractor", "digits", "--device", "cpu", "--out", str(tmp_path / "e.json")]
    result = cli("eval", str(tmp_path / "real.npz"), str(tmp_path / "fake.npz"), *args)
    assert result.code == 2 and "hold NaN or infinite values" in _one_line(result.err)
    assert not (tmp_path / "e.json").exists()


# --------------------------------------------------------------------------- complete = reported


def test_a_run_is_complete_only_after_its_reports(cli, tiny_spec, tmp_path, monkeypatch):
    import genbench.benchmarks.runner as runner

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device", "report.html")

    monkeypatch.setattr(runner, "write_run_reports", no_space)
    out = tmp_path / "runs"
    result = cli("run", str(tiny_spec(steps=2, num_samples=32)), "--out", str(out))
    assert result.code == 1
    assert _last_line(result.err) == "bench: error: report.html: No space left on device"
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    monkeypatch.undo()
    resumed = cli("resume", str(run_dir))
    assert resumed.code == 0, resumed.err
    assert "dcgan: kept" in resumed.out
    assert (run_dir / "report.html").is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    # A complete run whose reports went missing gets them back.
    (run_dir / "report.md").unlink()
    again = cli("resume", str(run_dir))
    assert again.code == 0 and (run_dir / "report.md").is_file()


def test_resume_runs_a_model_whose_metrics_are_corrupt_again(cli, tiny_spec, tmp_path):
    out = tmp_path / "runs"
    assert cli("run", str(tiny_spec(steps=2, num_samples=32)), "--out", str(out)).code == 0
    (run_dir,) = out.iterdir()
    good = json.loads((run_dir / "dcgan" / "metrics.json").read_text())
    (run_dir / "dcgan" / "metrics.json").write_text('{"model": "dcgan", "metr')
    status = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**status, "status": "running"}))
    result = cli("resume", str(run_dir))
    assert result.code == 0, result.err
    assert "dcgan: evaluated from its checkpoint" in result.out
    again = json.loads((run_dir / "dcgan" / "metrics.json").read_text())
    assert again["metrics"] == good["metrics"]


# --------------------------------------------------------------------------- one line


def test_bad_input_is_one_line_and_writes_nothing(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=2, num_samples=32)
    text = spec.read_text()
    nested = tmp_path / "nested.toml"
    nested.write_text(text + "\n[evaluate.x]\n" + "y = " + "[" * 5000 + "]" * 5000 + "\n")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = [
        ([str(nested)], "nested too deeply"),
        ([str(binary)], "not valid TOML"),
        ([str(tmp_path)], "is a directory"),
        ([str(spec), "--seed", "-5"], "benchmark.seed: Input should be greater than or equal"),
        ([str(spec), "--num-samples", str(10**12)], "num_samples: Input should be less"),
        ([str(spec), "--device", "tpu"], "--device: unknown device 'tpu'"),
    ]
    for old, new, message in [
        ("steps = 2", "steps = true", "train.steps: Input should be a valid integer"),
        ('metrics = ["fid", "is"]', 'metrics = ["fid", "fid"]', "'fid' is listed twice"),
        ('device = "cpu"', 'device = "gpu0"', "benchmark.device: unknown device 'gpu0'"),
    ]:
        variant = tmp_path / f"v{len(cases)}.toml"
        variant.write_text(text.replace(old, new))
        cases.append(([str(variant)], message))
    for args, message in cases:
        result = cli("run", *args, "--out", str(tmp_path / "runs"))
        assert result.code == 2, (args, result.err)
        assert message in _one_line(result.err), (args, result.err)
    assert not (tmp_path / "runs").exists()
    result = cli("run", str(spec), "--out", str(a_file))  # --out is a file
    assert result.code == 1 and str(a_file) in _last_line(result.err)
    assert a_file.read_text() == "not a directory"


def test_bad_images_are_one_line_errors(cli, tmp_path):
    real = write_pngs(tmp_path / "real", varied_images(4, 4, seed=0))
    cases = {}
    for name, write in {
        "empty": lambda p: p.write_bytes(b""),
        "corrupt": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40),
        "bomb": lambda p: Image.new("1", (10_000, 10_000)).save(p),
    }.items():
        folder = write_pngs(tmp_path / name, varied_images(3, 4, seed=1))
        write(folder / "zzz.png")
        cases[name] = folder
    np.savez(tmp_path / "objects.npz", np.array([object(), object()], dtype=object))
    cases["objects"] = tmp_path / "objects.npz"
    messages = {
        "empty": "zzz.png: not a readable image",
        "corrupt": "zzz.png: not a readable image",
        "bomb": "10000 x 10000 pixels is more than genbench reads",
        "objects": "objects.npz: cannot read its images",
    }
    for i, (name, fake) in enumerate(cases.items()):
        workers = str(i % 2)  # read in this process, or in a DataLoader worker
        result = cli("eval", str(real), str(fake), "--extractor", "digits", "--device", "cpu",
                     "--num-workers", workers, "--out", str(tmp_path / "e.json"))  # fmt: skip
        assert result.code == 2, (name, result.err)
        assert messages[name] in _last_line(result.err), (name, result.err)
        assert "Traceback" not in result.err and "worker" not in result.err
    assert os.path.getsize(cases["bomb"] / "zzz.png") < 200_000  # small file, huge image


# --------------------------------------------------------------------------- checkpoints


def test_bad_checkpoints_are_refused_before_the_run_exists(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=2, num_samples=32)
    first = tmp_path / "first"
    assert cli("run", str(spec), "--out", str(first)).code == 0
    (run_dir,) = first.iterdir()
    ckpt = run_dir / "dcgan" / "checkpoint.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[:100])
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    nan = {**state, name: torch.full_like(state[name], math.nan)}
    int8 = {**state, name: state[name].to(torch.int8)}
    save_file(nan, str(tmp_path / "nan.safetensors"), metadata={"generator": "dcgan"})
    save_file(int8, str(tmp_path / "int8.safetensors"), metadata={"generator": "dcgan"})
    wider = tmp_path / "wider.toml"
    wider.write_text(spec.read_text().replace("ngf = 8", "ngf = 16"))
    for spec_path, path, message in [
        (spec, truncated, "not a readable safetensors checkpoint"),
        (wider, ckpt, "does not fit this model's config"),
        (spec, tmp_path / "nan.safetensors", "holds NaN or infinite values"),
        (spec, tmp_path / "int8.safetensors", "is torch.int8, the network holds torch.float32"),
    ]:
        out = tmp_path / "second"
        result = cli("run", str(spec_path), "--out", str(out), "--checkpoint", f"dcgan={path}")
        assert result.code == 2 and message in _one_line(result.err), result.err
        assert not out.exists()  # refused before the run directory was made


# --------------------------------------------------------------------------- one owner


HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from genbench.store import files\n"
    "with files.run_lock(Path(sys.argv[1])):\n"
    "    (Path(sys.argv[1]) / 'held').write_text('yes')\n"
    "    time.sleep(120)\n"
)


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that owns ``run_dir`` (once its 'held' file appears)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)])
    while proc.poll() is None and not (run_dir / "held").exists():
        time.sleep(0.01)
    assert proc.poll() is None
    return proc


def test_a_run_directory_has_one_owner(tmp_path):
    other = _holder(tmp_path)
    try:
        busy = pytest.raises(Busy, match=f"process {other.pid} on .* is working in this run")
        with busy, files.run_lock(tmp_path):
            pass
    finally:
        other.kill()  # SIGKILL: no clean-up at all
        other.wait()
    with files.run_lock(tmp_path):  # the kernel released the dead owner's lock
        assert f"process {os.getpid()}" in (tmp_path / files.LOCK).read_text()
        with pytest.raises(Busy), files.run_lock(tmp_path):  # and this one holds it now
            pass


def test_a_second_resume_of_a_busy_run_is_refused(cli, tiny_spec, tmp_path):
    out = tmp_path / "runs"
    assert cli("run", str(tiny_spec(steps=2, num_samples=32)), "--out", str(out)).code == 0
    (run_dir,) = out.iterdir()
    status = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**status, "status": "running"}))
    other = _holder(run_dir)
    try:
        before = (run_dir / "run.json").read_text()
        result = cli("resume", str(run_dir))
        assert result.code == 2 and "is working in this run" in _one_line(result.err)
        assert (run_dir / "run.json").read_text() == before
    finally:
        other.kill()
        other.wait()


# --------------------------------------------------------------------------- fuzz

SECTIONS = ["benchmark", "train", "sample", "evaluate", "timing", "models"]
KNOWN = [
    "name", "dataset", "seed", "device", "steps", "epochs", "batch_size", "log_every",
    "num_samples", "guidance", "extractor", "metrics", "dims", "resize", "repeats",
    "generator", "config", "train", "sample", "checkpoint", "nz", "lr", "schema_version",
]  # fmt: skip
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(KNOWN), st.text(max_size=10))
edits = st.lists(
    st.tuples(st.sampled_from(SECTIONS), st.lists(keys, min_size=1, max_size=3), values),
    min_size=1,
    max_size=4,
)


def _apply(spec: dict, section: str, path: list[str], value: object) -> dict:
    node = spec.setdefault(section, {})
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return spec


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=edits)
def test_random_specs_give_exit_0_or_one_line_errors(cli, tiny_spec, tmp_path, changes):
    base = tomllib.loads(tiny_spec().read_text())
    for section, path, value in changes:
        base = _apply(base, section, path, value)
    try:
        text = tomli_w.dumps(base)
    except (TypeError, ValueError):
        return  # not expressible in TOML: no spec file can hold it
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    out = tmp_path / "out"
    result = cli("run", str(path), "--dry-run", "--out", str(out))
    assert result.code in (0, 2), result.err
    assert "Traceback" not in result.err
    if result.code == 2:  # one line per problem, each a usage error
        lines = result.err.strip().splitlines()
        assert lines and all(line.startswith("bench: error: ") for line in lines), result.err
    else:  # every name that becomes a folder stays a single component inside --out
        plan = tomllib.loads(result.out[result.out.index("schema_version") :])
        run_dir = out / "run"
        for name in plan["models"]:
            assert files.model_dir(run_dir, name).parent == run_dir
        assert files.check_name(plan["benchmark"]["name"], "benchmark.name")
    assert not out.exists()


# --------------------------------------------------------------------------- specs


def test_model_names_that_would_collide_are_refused(cli, tiny_spec, tmp_path):
    text = tiny_spec().read_text()
    second = '\n[models.DCGAN]\ngenerator = "dcgan"\n'
    for variant, message in [
        (text.replace("[models.dcgan]", '[models."report.md"]'), "name of a run's own file"),
        (text + second, "another model differs only in case"),
    ]:
        path = tmp_path / "s.toml"
        path.write_text(variant)
        result = cli("run", str(path), "--out", str(tmp_path / "runs"))
        assert result.code == 2 and message in _one_line(result.err), result.err
    assert not (tmp_path / "runs").exists()


def test_resolved_specs_hold_absolute_paths_and_model_lengths_win(tiny_spec, tmp_path, monkeypatch):
    from genbench import api

    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    text = tiny_spec().read_text().replace('device = "cpu"', 'device = "cpu"\ndata_root = "data"')
    text += '\n[models.long]\ngenerator = "dcgan"\ntrain = { epochs = 2 }\n'
    Path("s.toml").write_text(text)
    plan = api.load_spec("s.toml")
    assert plan.benchmark.data_root == tmp_path / "data"
    assert plan.models["dcgan"].train.steps == 10  # the global [train] steps
    assert plan.models["long"].train.steps == round(2 * 1437 / 32)  # its own epochs win


def test_a_resolved_spec_without_a_version_was_written_by_version_1(tmp_path):
    from genbench.benchmarks.spec import read_spec

    old = (FIXTURES / "tiny-20261202-233147-5b5f" / "spec.toml").read_text()
    copy = tmp_path / "copied.toml"
    copy.write_text(old)  # copied out of its run: no run.json to say which version
    spec, _ = read_spec(str(copy))
    assert spec.models["ddpm"].sample["guidance"] == 1.5  # w = 0.5 read as s = 1.5
    handwritten = tmp_path / "mine.toml"
    handwritten.write_text(old.split("\n", 1)[1])  # the same, without the resolved header
    spec, _ = read_spec(str(handwritten))
    assert spec.models["ddpm"].sample["guidance"] == 0.5  # today's meaning: s = 0.5


def test_statistics_files_must_be_finite(cli, tmp_path):
    mu, sigma = np.zeros(64), np.eye(64)
    sigma[3, 3] = np.inf
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 1), dtype=np.uint8)
    np.savez(tmp_path / "fake.npz", images)
    args = ["--extractor", "digits", "--device", "cpu", "--out", str(tmp_path / "e.json")]
    result = cli("eval", str(tmp_path / "stats.npz"), str(tmp_path / "fake.npz"), *args)
    assert result.code == 2 and "mu or sigma hold NaN or infinite values" in result.err


def test_kid_from_tiny_subsets_comes_with_a_word(cli, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("real", "fake"):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8))
    args = ["--extractor", "digits", "--device", "cpu", "--metrics", "kid"]
    args += ["--kid-subset-size", "5", "--out", str(tmp_path / "e.json")]
    result = cli("eval", str(tmp_path / "real.npz"), str(tmp_path / "fake.npz"), *args)
    assert result.code == 0, result.err
    assert "note: KID from subsets of 5 images is dominated by noise" in result.out
