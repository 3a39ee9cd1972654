"""The harness's one training loop: exact kill-and-resume, the divergence guard, time
budgets and learning-rate schedules."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genbench.benchmarks.trainer import Trainer, read_state, state_files
from genbench.generators import GENERATORS
from genbench.generators.training import LRSchedule, group_slices
from tests import resume_worker, spawn

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8


def _worker(name: str, folder: Path) -> spawn.Spawned:
    """``tests.resume_worker`` in its own process, one thread."""
    folder.mkdir(exist_ok=True)
    states = folder / "training"
    states.mkdir(exist_ok=True)
    out = folder / "final.safetensors"
    return spawn.call(resume_worker.main, name, STEPS, states, out, threads=1)


def _newest_step(states: Path) -> int:
    found = state_files(states)
    return int(found[0].stem.split("-")[1]) if found else 0


@pytest.mark.parametrize("name", GENERATORS.names())
def test_kill_and_resume_is_exact(name, tmp_path):
    """SIGKILL at two moments of training, resumed each time from the newest training
    state: the final weights equal an uninterrupted run's bit for bit. (The uninterrupted
    run goes beside the first attempt: one thread each, two cores.)"""
    plain = _worker(name, tmp_path / "plain")
    killed = tmp_path / "killed"
    seen = []
    for target in (3, 6):  # kill once the training state of this step is written
        proc = _worker(name, killed)
        while _newest_step(killed / "training") < target:
            assert proc.poll() is None, proc.stderr()[-2000:]
            time.sleep(0.01)  # waits on progress (a file), not on a deadline
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_newest_step(killed / "training"))
        assert not (killed / "final.safetensors").exists(), "killed after training ended"
    assert seen == sorted(seen) and seen[-1] < STEPS
    assert plain.wait() == 0, plain.stderr()[-2000:]
    last = _worker(name, killed)
    assert last.wait() == 0, last.stderr()[-2000:]
    want = load_file(str(tmp_path / "plain" / "final.safetensors"))
    got = load_file(str(killed / "final.safetensors"))
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), f"{key}: max abs diff {(got[key] - value).abs().max()}"
    # the resumed training log goes on from the state: one line per step, none twice
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))


DIVERGENT_DDPM = (
    '\n[models.ddpm]\ngenerator = "ddpm"\n'
    "config = { num_timesteps = 10, channels = 8, channel_mult = [1, 2], num_res_blocks = 1, "
    'attn_resolutions = [], norm_groups = 4, warmup_steps = 0, sample_steps = "ddim3", '
    "lr = 1e6 }\ntrain = { checkpoint_every = 2 }\n"
)


def test_a_divergent_learning_rate_stops_that_model_only(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=20, num_samples=64, extra=DIVERGENT_DDPM)
    out = tmp_path / "runs"
    result = cli("run", str(spec), "--out", str(out))
    assert result.code == 1
    lines = [line for line in result.err.splitlines() if "ddpm failed" in line]
    assert len(lines) == 1, result.err
    line = lines[0]
    assert "bench: ddpm failed: training diverged at step" in line and ", phase main: " in line
    path = Path(line.split("last good training state: ")[1])
    (run_dir,) = out.iterdir()
    assert path.parent == run_dir / "ddpm" / "training"
    state = read_state(path)
    assert all(torch.isfinite(v).all() for v in state["networks"].values() if v.is_floating_point())
    failed_at = int(line.split("diverged at step ")[1].split(",")[0])
    assert state["step"] == failed_at - 1  # the last good step, the bad one not applied
    from genbench.benchmarks.plan import Overrides, resolve
    from genbench.benchmarks.spec import read_spec

    model = resolve(*read_spec(str(spec)), Overrides(models=["ddpm"])).models["ddpm"]
    gen = model.generator_class(model.config, model.data_shape, torch.device("cpu"))
    Trainer(gen, model.train).load_state_dict(state)  # loadable into the model
    ddpm = json.loads((run_dir / "ddpm" / "metrics.json").read_text())
    assert ddpm["failure"].startswith("training diverged") and ddpm["metrics"] == {}
    dcgan = json.loads((run_dir / "dcgan" / "metrics.json").read_text())
    assert dcgan["failure"] is None and math.isfinite(dcgan["metrics"]["fid"]["value"])
    report = (run_dir / "report.md").read_text()
    assert "| failed |" in report and "Failed, no result: ddpm" in report


def test_a_time_budget_trains_that_long_and_is_recorded(cli, tiny_spec, tmp_path):
    out = tmp_path / "runs"
    result = cli("run", str(tiny_spec()), "--out", str(out), "--time-budget", "5s")
    assert result.code == 0, result.err
    (run_dir,) = out.iterdir()
    m = json.loads((run_dir / "dcgan" / "metrics.json").read_text())
    step = m["train_time_s"] / m["train_steps"]
    assert m["train_steps"] > 10  # the spec's 10 steps are replaced by the budget
    assert 5.0 <= m["train_time_s"] < 5.0 + 3 * step  # 5 s and at most one more step
    assert m["train_budget"] == "5s" and m["train_stopped_by"] == "time_budget"
    assert 'time_budget = "5s"' in (run_dir / "spec.toml").read_text()
    bad = cli("run", str(tiny_spec()), "--out", str(out), "--time-budget", "soon")
    assert bad.code == 2 and "--time-budget: 'soon' is not a duration" in bad.err


def test_learning_rate_schedules():
    warm = LRSchedule(warmup_steps=4)
    assert [warm.lr(2.0, s, 0, 0.0) for s in (1, 2, 4, 9)] == [0.5, 1.0, 2.0, 2.0]
    images = LRSchedule(warmup_images=100)
    assert images.lr(1.0, 3, 50, 0.0) == pytest.approx(0.5)
    cos = LRSchedule(decay="cosine", floor=0.1)
    assert cos.lr(1.0, 1, 0, 0.0) == pytest.approx(1.0)
    assert cos.lr(1.0, 5, 0, 0.5) == pytest.approx(0.55)
    assert cos.lr(1.0, 9, 0, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not both"):
        LRSchedule(warmup_steps=1, warmup_images=1)


@pytest.mark.parametrize(
    ("n", "parts", "group", "sizes"),
    [(16, 4, 1, [4, 4, 4, 4]), (10, 4, 1, [3, 3, 2, 2]), (22, 3, 4, [8, 8, 6])],
)
def test_micro_batches_cover_the_batch(n, parts, group, sizes):
    slices = group_slices(n, parts, group)
    assert [s.stop - s.start for s in slices] == sizes and slices[-1].stop == n


WORKER = [sys.executable, "-m", "tests.ddp_worker"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    """Every generator trained by two Gloo processes, and its one-process reference."""
    folder = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    names = ",".join(GENERATORS.names())
    procs = [
        subprocess.Popen(
            [*WORKER, names, str(rank), str(folder / "init"), str(folder)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for rank in range(2)
    ]
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read().decode()[-3000:]
    return folder


@pytest.mark.parametrize("name", GENERATORS.names())
def test_accumulation_under_real_ddp_equals_the_full_batch(name, ddp_runs):
    """Two Gloo processes (torch.distributed on CPU, no fakes) with k = 4 micro-batches
    each: one all-reduce per bucket per optimiser update of each network, counted by a DDP
    communication hook; the gradients and parameters of one process with the full batch.
    DCGAN's batch norm normalises per micro-batch, so its reference is one process with
    the same 8 micro-batches (k = 8) instead of one full batch."""
    ddp = torch.load(ddp_runs / f"{name}-ddp.pt", weights_only=True)
    ref = torch.load(ddp_runs / f"{name}-ref.pt", weights_only=True)
    updates: dict[str, int] = {}
    for step in (1,):
        last = None
        for _phase, optimizer, interval in ddp["phases"]:
            if (step - 1) % interval == 0:
                if optimizer != last:
                    updates[optimizer] = updates.get(optimizer, 0) + 1
                last = optimizer
    assert set(ddp["calls"]) == set(updates)  # every trained network is wrapped in DDP
    for net, indices in ddp["calls"].items():
        buckets = max(indices) + 1
        assert sorted(indices) == sorted(list(range(buckets)) * updates[net]), (net, indices)
    assert (
        ddp["params"].keys() == ref["params"].keys() and ddp["grads"].keys() == ref["grads"].keys()
    )
    for key, grad in ref["grads"].items():  # the all-reduced gradient is the full batch's
        # float32 sums in another order: elements near 0 of a tensor whose largest is about 1
        # (the cascade's 8 px EDM) differ by about 1e-6, a few ulps of that largest value
        atol = max(1e-7, 2e-6 * grad.abs().max().item())
        torch.testing.assert_close(ddp["grads"][key], grad, rtol=1e-3, atol=atol, msg=key)
    compared = 0
    for key, value in ref["params"].items():
        grad = ref["grads"].get(key)
        if grad is None:
            continue
        # Adam turns a gradient of rounding noise (an element whose true gradient is about
        # 0, such as an attention key bias) into a full step: real gradients compare.
        real = grad.abs() > 1e-6
        diff = (ddp["params"][key] - value)[real].abs().max().item() if real.any() else 0.0
        assert diff <= 1e-5, f"{key}: max abs diff {diff}"
        compared += int(real.sum())
    # (zero-initialised layers, as DDGAN's residual ends, get no gradient at step 1)
    assert compared > sum(v.numel() for v in ref["params"].values()) // 5
