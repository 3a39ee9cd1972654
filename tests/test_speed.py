"""``bench speed``: every reported field, the history file, fast paths against fp32 eager."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from genbench.benchmarks.fastpath import FastPaths, prepare_sampler
from genbench.benchmarks.plan import Overrides, resolve
from genbench.benchmarks.sampling import labels_for
from genbench.benchmarks.spec import read_spec
from genbench.benchmarks.speed import machine_id
from genbench.benchmarks.timing import SamplingTimer
from genbench.core.errors import GenbenchError
from genbench.generators import GENERATORS, DataShape
from genbench.store.records import Environment
from tests.trainkit import wake

SHAPE = DataShape(channels=1, image_size=16, num_classes=10)
SMOKE = {
    m.generator: m
    for spec in ("smoke", "extras")
    for m in resolve(*read_spec(spec), Overrides()).models.values()
}

# The output contract of speed.json / the history (reports read these names).
RECORD_FIELDS = {
    "commit",
    "machine",
    "timestamp",
    "model",
    "generator",
    "batch_size",
    "steps",
    "nfe",
    "precision",
    "channels_last",
    "compile",
    "cuda_graphs",
    "device",
    "raw_s",
    "median_s",
    "iqr_s",
    "images_per_s",
    "s_per_50k",
    "ms_per_nfe",
    "image_nfe_per_s",
    "peak_memory_bytes",
    "warmup_s",
    "time_to_first_image_s",
    "noise_share",
    "weights",
}


def _speed(cli, spec: Path, tmp_path: Path, *args: str):
    return cli(
        "speed",
        str(spec),
        "--out",
        str(tmp_path / "out"),
        "--history",
        str(tmp_path / "hist" / "speed.jsonl"),
        "--repeats",
        "10",
        *args,
    )


def test_bench_speed_reports_every_field(cli, tiny_spec, tmp_path):
    result = _speed(cli, tiny_spec(), tmp_path, "--batch-sizes", "4,8")
    assert result.code == 0, result.err
    assert "untrained weights: sampling speed does not depend" in result.out
    (speed_json,) = (tmp_path / "out").glob("speed-tiny-*/speed.json")
    doc = json.loads(speed_json.read_text())
    assert doc["kind"] == "speed" and doc["complete"] is True
    env = doc["environment"]
    assert env["device"] == "cpu" and env["device_name"] and env["torch"] == torch.__version__
    records = doc["results"]
    assert [(r["model"], r["batch_size"]) for r in records] == [("dcgan", 4), ("dcgan", 8)]
    for r in records:
        assert set(r) >= RECORD_FIELDS, RECORD_FIELDS - set(r)
        assert r["weights"] == "untrained" and r["generator"] == "dcgan"
        machine = machine_id(Environment.model_validate(env))
        assert r["commit"] == env["git_commit"] and r["machine"] == machine
        assert (r["precision"], r["channels_last"], r["compile"], r["cuda_graphs"]) == (
            "fp32",
            False,
            "none",
            False,
        )
        assert len(r["raw_s"]) == 10 and all(t > 0 for t in r["raw_s"])
        assert len(r["warmup_s"]) == 1 and r["time_to_first_image_s"] == r["warmup_s"][0]
        assert r["nfe"] == 1 and r["repeats"] == 10
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / r["median_s"])
        assert r["s_per_50k"] == pytest.approx(50_000 / r["images_per_s"])
        assert r["ms_per_nfe"] == pytest.approx(1000 * r["median_s"] / r["nfe"])
        assert r["image_nfe_per_s"] == pytest.approx(r["images_per_s"] * r["nfe"])
        assert 0 <= r["iqr_s"] <= max(r["raw_s"]) - min(r["raw_s"])
        assert r["peak_memory_bytes"] > 0 and r["peak_memory_kind"] == "process_max_rss"
        assert 0 < r["noise_share"] < 1 and r["noise_s"] > 0
        # The load it ran under (a load above its threads would mark it noisy).
        assert r["threads"] == torch.get_num_threads() and r["load_average"] >= 0
        # How close to the machine: FLOPs of an image, reached GFLOP/s, the fp32 peak.
        assert r["flops_per_image"] > 0 and r["peak_gflops_per_s"] > 0
        assert r["gflops_per_s"] == pytest.approx(r["flops_per_image"] * r["images_per_s"] / 1e9)
        assert r["peak_fraction"] == pytest.approx(r["gflops_per_s"] / r["peak_gflops_per_s"])
    assert "images/s" in result.out and "noise" in result.out and "GFLOP/s (peak)" in result.out


def test_history_appends_and_round_trips(cli, tiny_spec, tmp_path):
    spec = tiny_spec()
    assert _speed(cli, spec, tmp_path, "--batch-sizes", "4").code == 0
    history = tmp_path / "hist" / "speed.jsonl"
    first = history.read_text()
    assert _speed(cli, spec, tmp_path, "--batch-sizes", "2,4").code == 0
    text = history.read_text()
    assert text.startswith(first)  # earlier lines untouched
    lines = [json.loads(line) for line in text.splitlines()]
    assert [r["batch_size"] for r in lines] == [4, 2, 4]
    results = []
    for path in sorted((tmp_path / "out").glob("speed-tiny-*/speed.json")):
        results += json.loads(path.read_text())["results"]
    by_id = {(r["speed_id"], r["batch_size"]): r for r in results}
    for line in lines:  # each history line equals its speed.json record, raw samples included
        assert by_id[(line["speed_id"], line["batch_size"])] == line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--repeats", "3"), "timing.repeats: bench speed needs at least 10"),
        (("--batch-sizes", "4,x"), "--batch-sizes: expected positive integers"),
        (("--batch-sizes", "0"), "--batch-sizes: expected positive integers"),
        (("--precision", "fp8"), "--precision: unknown 'fp8'; valid: fp32, tf32, bf16, fp16"),
        (("--compile", "fast"), "--compile: unknown mode 'fast'; valid: none, default"),
        (("--cuda-graphs",), "--cuda-graphs needs --device cuda"),
        (("--baseline", "pytorch"), "--baseline: unknown 'pytorch'; valid: diffusers"),
        (("--models", "vae"), "--models: unknown model 'vae'"),
    ],
)
def test_usage_errors_write_nothing(cli, tiny_spec, tmp_path, args, message):
    result = cli("speed", str(tiny_spec()), "--out", str(tmp_path / "out"), *args)
    assert result.code == 2
    assert result.err.startswith("bench: error: ") and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- fast paths


def _images(name: str, fast: FastPaths, device: torch.device) -> torch.Tensor:
    if name not in SMOKE:
        pytest.fail(f"{name} has no entry in benchmarks/specs/smoke.toml or extras.toml")
    seeds = [0, 1, 2]
    torch.manual_seed(0)
    model = SMOKE[name]
    gen = wake(GENERATORS.get(name)(model.config, SHAPE, device))  # no all-zero output layers
    gen.eval()
    labels = labels_for(gen, seeds)
    run = prepare_sampler(gen, fast, lambda: gen.sample(seeds, labels, model.settings))
    return run().float()


_EAGER: dict[tuple[str, str], torch.Tensor] = {}


def _check_against_eager(name: str, fast: FastPaths, device: torch.device) -> float:
    """Mean |difference| to fp32 eager on the same seeds; fails above ``fast.tolerance``."""
    key = (name, str(device))
    if key not in _EAGER:  # one eager sampling per generator and device
        _EAGER[key] = _images(name, FastPaths(), device)
    eager = _EAGER[key]
    fast_images = _images(name, fast, device)
    assert fast_images.shape == eager.shape and torch.isfinite(fast_images).all()
    diff = (fast_images - eager).abs().mean().item()
    assert diff <= fast.tolerance, f"{name} {fast}: mean |diff| {diff} > {fast.tolerance}"
    return diff


# TF32 only exists on CUDA (on CPU it is fp32 itself); compile is slow to build on CPU and
# tested separately below.
CPU_PATHS = [
    FastPaths(channels_last=True),
    FastPaths(precision="bf16"),
    FastPaths(precision="fp16", channels_last=True),
]


@pytest.mark.parametrize("name", GENERATORS.names())
@pytest.mark.parametrize("fast", CPU_PATHS, ids=lambda f: f"{f.precision}-nhwc{f.channels_last}")
def test_cpu_fast_paths_match_fp32_eager(name, fast):
    diff = _check_against_eager(name, fast, torch.device("cpu"))
    if fast.precision in ("bf16", "fp16"):
        assert diff > 0  # autocast really ran the network in low precision


def test_tf32_is_fp32_itself_on_cpu():
    assert _check_against_eager("dcgan", FastPaths(precision="tf32"), torch.device("cpu")) == 0


@pytest.mark.slow
def test_cpu_compile_matches_eager_and_is_recorded(cli, tiny_spec, tmp_path):
    _check_against_eager("dcgan", FastPaths(compile="default"), torch.device("cpu"))
    result = _speed(cli, tiny_spec(), tmp_path, "--batch-sizes", "4", "--compile", "default")
    assert result.code == 0, result.err
    (speed_json,) = (tmp_path / "out").glob("speed-tiny-*/speed.json")
    (record,) = json.loads(speed_json.read_text())["results"]
    assert record["compile"] == "default"
    # compilation happens in the cold first call, never in a timed repeat
    assert record["time_to_first_image_s"] > 5 * record["median_s"]
    # The kernels went to genbench's cache (not torch's /tmp default); a second run finds
    # them compiled and says so (across processes the disk cache serves them: docs/speed.md).
    from genbench.core.cache import cache_root

    (inductor,) = (cache_root() / "inductor").iterdir()
    assert any(inductor.rglob("*")) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor)

    def second_run(tag: str) -> tuple[dict, str]:
        args = ("--batch-sizes", "4", "--compile", "default")
        again = _speed(cli, tiny_spec(), tmp_path / tag, *args)
        assert again.code == 0, again.err
        (speed_json,) = (tmp_path / tag / "out").glob("speed-tiny-*/speed.json")
        (record,) = json.loads(speed_json.read_text())["results"]
        return record, again.out

    warm, out = second_run("warm")
    assert warm["compile_cache"] == "warm" and "(warm)" in out
    # Neither on disk nor in this process: compiled again, and said so.
    shutil.rmtree(inductor)
    torch._dynamo.reset()
    cold, out = second_run("cold")
    assert cold["compile_cache"] == "cold" and "(cold)" in out


def test_fast_paths_come_from_the_spec_and_the_flags_override(cli, tiny_spec, tmp_path):
    spec = tiny_spec()
    spec.write_text(
        spec.read_text().replace("batch_size = 16\n", 'batch_size = 2\nprecision = "bf16"\n')
    )
    result = _speed(cli, spec, tmp_path, "--channels-last")
    assert result.code == 0, result.err
    (speed_json,) = (tmp_path / "out").glob("speed-tiny-*/speed.json")
    (record,) = json.loads(speed_json.read_text())["results"]
    assert (record["precision"], record["channels_last"], record["batch_size"]) == ("bf16", True, 2)


def test_timer_phases_and_time_to_first_image():
    calls = []
    timer = SamplingTimer(lambda: calls.append(1), device=torch.device("cpu"), batch_size=8, nfe=4)
    timer.start(warmup=2)
    timer.repeat(3)
    timer.repeat(2)
    result = timer.result()
    assert len(calls) == 2 + 5 + 1  # warm-ups, repeats, one noise-share call
    assert len(result.raw_s) == 5 and result.warmup_s[0] == result.time_to_first_image_s
    assert result.noise_share is None  # nothing drew seeded noise
    no_warmup = SamplingTimer(lambda: None, device=torch.device("cpu"), batch_size=1, nfe=1)
    no_warmup.start(warmup=0)
    no_warmup.repeat(2)
    assert no_warmup.result().time_to_first_image_s == no_warmup.raw_s[0]
    with pytest.raises(ValueError):
        SamplingTimer(lambda: None, device=torch.device("cpu"), batch_size=1, nfe=1).result()


def test_fast_path_checks():
    with pytest.raises(GenbenchError, match="that mode already captures CUDA graphs"):
        FastPaths(compile="reduce-overhead", cuda_graphs=True).check(torch.device("cuda"))
    FastPaths(precision="bf16", channels_last=True).check(torch.device("cpu"))


def test_bench_run_timing_records_fast_paths(cli, tiny_spec, tmp_path):
    spec = tiny_spec(steps=0, num_samples=20)
    spec.write_text(
        spec.read_text().replace("batch_size = 16\n", "batch_size = 4\nchannels_last = true\n")
    )
    result = cli("run", str(spec), "--out", str(tmp_path))
    assert result.code == 0, result.err
    (timing_json,) = tmp_path.glob("tiny-*/dcgan/timing.json")
    timing = json.loads(timing_json.read_text())
    assert timing["channels_last"] is True and timing["precision"] == "fp32"
    assert timing["batch_size"] == 4 and "time_to_first_image_s" in timing
    assert 0 < timing["noise_share"] < 1


# --------------------------------------------------------------------------- baseline


needs_unet = pytest.mark.skipif("ddpm" not in GENERATORS, reason="needs the ddpm generator")


@needs_unet
def test_diffusers_baseline_is_measured_side_by_side(cli, tmp_path, monkeypatch):
    """Baseline and ours are timed call by call in alternation (A B, B A, ...)."""
    from genbench.benchmarks.timing import SamplingTimer

    calls: list[int] = []
    real_repeat = SamplingTimer.repeat

    def logged(self, n):
        calls.append(id(self))
        return real_repeat(self, n)

    monkeypatch.setattr(SamplingTimer, "repeat", logged)
    spec = tmp_path / "ddpm.toml"
    spec.write_text(
        '[benchmark]\nname = "b"\ndataset = "digits"\ndevice = "cpu"\n'
        "[timing]\nwarmup = 1\n"
        '[models.ddpm]\ngenerator = "ddpm"\n'
        "config = { num_timesteps = 100, sample_steps = 3, channels = 8, channel_mult = [1, 2], "
        "num_res_blocks = 1, attn_resolutions = [], norm_groups = 4 }\n"
    )
    result = _speed(
        cli, spec, tmp_path, "--batch-sizes", "2", "--steps", "3", "--baseline", "diffusers"
    )
    assert result.code == 0, result.err
    (speed_json,) = (tmp_path / "out").glob("speed-b-*/speed.json")
    base, ours = json.loads(speed_json.read_text())["results"]
    assert base["generator"] == "diffusers.DDPMPipeline" and base["baseline"] == "diffusers"
    assert ours["generator"] == "ddpm" and ours["baseline"] is None
    assert base["nfe"] == ours["nfe"] == 3 and base["parameters"] == ours["parameters"]
    assert base["noise_share"] is None and len(base["raw_s"]) == len(ours["raw_s"]) == 10
    a, b = calls[0], calls[1]
    assert a != b and calls == [a, b, b, a] * 5  # interleaved, first mover alternating
    assert "the throughput of diffusers.DDPMPipeline" in result.out
    assert base["precision"] == "fp32" and "(fp32 vs fp32 eager)" in result.out


def test_the_stock_pipeline_is_recorded_at_the_precision_torch_defaults_give_it(monkeypatch):
    """On CUDA torch lets cuDNN use TF32 for convolutions by default, so the stock pipeline's
    figures are tf32 figures (and its peak share is against the TF32 peak)."""
    from genbench.benchmarks.baselines import stock_precision

    assert stock_precision(torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert stock_precision(torch.device("cuda")) == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert stock_precision(torch.device("cuda")) == "fp32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # a V100: no TF32 cores
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert stock_precision(torch.device("cuda")) == "fp32"


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", GENERATORS.names())
@pytest.mark.parametrize(
    "fast",
    [
        FastPaths(precision="tf32"),
        FastPaths(precision="bf16"),
        FastPaths(precision="fp16", channels_last=True),
        FastPaths(cuda_graphs=True),
        FastPaths(precision="bf16", cuda_graphs=True),
        FastPaths(compile="default"),
        FastPaths(precision="bf16", compile="default", cuda_graphs=True),
    ],
    ids=str,
)
def test_gpu_fast_paths_match_fp32_eager(name, fast):
    _check_against_eager(name, fast, torch.device("cuda"))


@pytest.mark.gpu
def test_bench_speed_on_cuda_uses_cuda_memory(cli, tiny_spec, tmp_path):
    result = _speed(cli, tiny_spec(), tmp_path, "--device", "cuda", "--batch-sizes", "8")
    assert result.code == 0, result.err
    (speed_json,) = (tmp_path / "out").glob("speed-tiny-*/speed.json")
    (record,) = json.loads(speed_json.read_text())["results"]
    assert (
        record["device"].startswith("cuda") and record["peak_memory_kind"] == "cuda_max_allocated"
    )


# --------------------------------------------------------------------------- peak


def test_the_peak_is_measured_once_per_machine_and_results_are_a_share_of_it(tmp_path, monkeypatch):
    from genbench.benchmarks import peak

    measured: list[torch.dtype] = []

    def fake(device, dtype):
        measured.append(dtype)
        return {"matmul": 100.0, "conv": 80.0, "peak": 100.0}

    monkeypatch.setattr(peak, "measure_peak", fake)
    cpu = torch.device("cpu")
    first = peak.machine_peak(cpu, "machine-a")
    again = peak.machine_peak(cpu, "machine-a")
    assert measured == [torch.float32, torch.bfloat16]  # once, both dtypes
    assert again == first and first["measured"]["threads"] == torch.get_num_threads()
    peak.machine_peak(cpu, "machine-b")  # another machine: its own measurement
    assert len(measured) == 4
    fields = peak.against_peak(2e9, 10.0, "bf16", first)
    assert fields == {
        "flops_per_image": 2e9,
        "gflops_per_s": pytest.approx(20.0),
        "peak_gflops_per_s": 100.0,
        "peak_fraction": pytest.approx(0.2),
    }
    assert peak.against_peak(None, 10.0, "fp32", first)["peak_fraction"] is None


def test_a_real_peak_measurement_is_positive():
    from genbench.benchmarks.peak import measure_peak

    rates = measure_peak(torch.device("cpu"), torch.float32)
    assert rates["matmul"] > 0 and rates["conv"] > 0
    assert rates["peak"] == max(rates["matmul"], rates["conv"])


def test_flops_per_image_count_every_network_evaluation(monkeypatch):
    """Twice the steps, twice the FLOPs; a sampler past the counting limit is not counted."""
    from types import SimpleNamespace

    from genbench.benchmarks import peak
    from genbench.benchmarks.peak import flops_per_image

    model = SMOKE["ddpm"]
    gen = GENERATORS.get("ddpm")(model.config, SHAPE, torch.device("cpu"))
    cls = type(gen)

    def flops(steps):
        settings = cls.make_settings(model.config, SHAPE, {"steps": steps})
        model_view = SimpleNamespace(settings=settings, sample=SimpleNamespace(labels=None))
        return flops_per_image(gen, model_view)

    two, four = flops(2), flops(4)
    assert two > 0 and four == pytest.approx(2 * two, rel=1e-6)
    monkeypatch.setattr(peak, "MAX_COUNTED_NFE", 3)
    assert flops(4) is None and flops(2) == two
