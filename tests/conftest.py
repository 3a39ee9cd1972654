"""Shared fixtures: an in-process CLI runner and tiny spec files.

The suite runs in ``-n auto`` pytest-xdist workers (pyproject's addopts): each worker gets
an equal share of the cores for torch and BLAS, set here before anything imports torch, so
workers never oversubscribe the machine (OpenMP threads spin while they wait, and two
workers of two threads each on two cores run several times slower than one). Processes
the tests start inherit the share.
"""

from __future__ import annotations

import os

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # before torch is imported anywhere
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = _share

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from genbench.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli():
    """Run ``bench ARGS...`` in-process; returns exit code, stdout and stderr."""

    def invoke(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
        return CliResult(code, out.getvalue(), err.getvalue())

    return invoke


TINY_SPEC = """
[benchmark]
name = "tiny"
dataset = "digits"
device = "cpu"

[train]
steps = {steps}
batch_size = 32
log_every = 5

[sample]
num_samples = {num_samples}
batch_size = 64
grid_size = 16

[evaluate]
extractor = "digits"
metrics = ["fid", "is"]

[timing]
repeats = 2
warmup = 1
batch_size = 16

[models.dcgan]
generator = "dcgan"
config = {{ ngf = 8, ndf = 8, nz = 16 }}
"""


@pytest.fixture
def tiny_spec(tmp_path: Path):
    """Write a tiny digits spec; ``tiny_spec(steps=..., num_samples=...)`` returns its path."""

    def make(steps: int = 10, num_samples: int = 100, extra: str = "") -> Path:
        path = tmp_path / f"tiny-{steps}-{num_samples}.toml"
        path.write_text(TINY_SPEC.format(steps=steps, num_samples=num_samples) + extra)
        return path

    return make


@pytest.fixture(autouse=True)
def _isolated_stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Reference statistics cached by any test go to a temporary folder, never ~/.cache."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("bench-cache")))


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests cleanly when no CUDA device is present (CI has none)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _strict_fp32_on_cuda(request: pytest.FixtureRequest):
    """``gpu`` tests compare CUDA with CPU float32 arithmetic, so cuDNN and cuBLAS may not
    round to TF32 behind their back (torch lets cuDNN do so by default, which moves a tiny
    network's output by about 1e-3, past those tests' 1e-4). Fast-path tests set the
    flags themselves through ``precision_context``."""
    if "gpu" not in request.keywords:
        yield
        return
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
