"""How close a sampling loop comes to the machine: the compute peak, measured, and the FLOPs
of one generated image, counted.

The peak of a dtype (float32, bfloat16, and TF32 and float16 on CUDA) is the faster of two
microbenchmarks on the device the speed run uses, each the median of timed repeats after
warm-up: a square matrix product (n = 1024 on CPU, 8192 on CUDA; 2 n^3 FLOPs) and a 3x3
convolution of the shape that dominates the CIFAR-10 UNet (256 channels in and out at
16 x 16, batch 8 on CPU, 128 on CUDA; 2 N H W C_out C_in 9 FLOPs). A dtype the hardware
only emulates (bf16 on a CPU without bf16 instructions) is timed at a smaller size (n = 256,
batch 1 on CPU), so that measuring it takes a second, not a minute: each microbenchmark
takes the largest of its sizes whose one call, projected from the small size's speed, takes
at most ``BUDGET_S``; the size used is recorded beside its rate. It is measured once per
machine (``speed.machine_id``: hardware, libraries, thread count) and cached in
``<genbench cache>/peak/<machine>-<device type>.json``.

A case's FLOPs per image are counted by ``torch.utils.flop_counter`` over one eager call of
the generator's sampler for one image (every network evaluation: matrix products,
convolutions, attention); the sampler's element-wise arithmetic is not counted, as FLOP
figures of networks never count it. Cases of more than ``MAX_COUNTED_NFE`` evaluations are
not counted (the count would cost as much as the timing).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genbench.benchmarks.fastpath import precision_context
from genbench.benchmarks.plan import ResolvedModel
from genbench.benchmarks.sampling import labels_for
from genbench.core import io
from genbench.core.cache import cache_root
from genbench.generators import Generator

MAX_COUNTED_NFE = 64
REPEATS = 7
BUDGET_S = 0.05
"""The longest one timed call of a microbenchmark may take (see ``_sized``)."""
DTYPES = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""A result's ``precision`` -> the dtype whose peak it is compared with."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], Any], flops: float, device: torch.device) -> float:
    """GFLOP/s of ``fn``: the median of ``REPEATS`` timed calls after two untimed ones."""
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


@dataclass(frozen=True)
class Problem:
    """A microbenchmark of adjustable size: its FLOPs and a call running it, by size."""

    flops: Callable[[int], float]
    build: Callable[[int], Callable[[], Any]]


def _sized(problem: Problem, sizes: tuple[int, ...], device: torch.device) -> tuple[float, int]:
    """GFLOP/s of the largest of ``sizes`` whose one call, projected from the smallest
    one's speed, takes at most ``BUDGET_S``: a dtype the hardware only emulates (bf16 on a
    CPU without bf16 instructions runs 10-100x slower) is timed at the small size."""
    fn = problem.build(sizes[0])
    fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    small_rate = problem.flops(sizes[0]) / max(time.perf_counter() - start, 1e-9)
    fitting = [size for size in sizes if problem.flops(size) / small_rate <= BUDGET_S]
    chosen = max(fitting, default=sizes[0])
    return _rate(problem.build(chosen), problem.flops(chosen), device), chosen


@torch.inference_mode()
def measure_peak(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """``{"matmul": GFLOP/s, "conv": GFLOP/s, "peak": the larger, and the sizes used}`` of
    ``dtype`` on ``device`` (see the module docstring)."""
    cuda = device.type == "cuda"
    channels, side = 256, 16

    def matmul(n: int) -> Callable[[], Any]:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        return lambda: a @ b

    def conv(batch: int) -> Callable[[], Any]:
        x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
        w = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
        if not cuda:  # oneDNN's fast CPU convolutions are channels-last, as the fast paths
            x = x.contiguous(memory_format=torch.channels_last)
            w = w.contiguous(memory_format=torch.channels_last)
        return lambda: F.conv2d(x, w, padding=1)

    matmul_rate, n = _sized(
        Problem(lambda n: 2.0 * n**3, matmul), (2048, 8192) if cuda else (256, 1024), device
    )
    conv_rate, batch = _sized(
        Problem(lambda b: 2.0 * b * side * side * channels * channels * 9, conv),
        (8, 128) if cuda else (1, 8),
        device,
    )
    return {
        "matmul": matmul_rate,
        "matmul_n": n,
        "conv": conv_rate,
        "conv_batch": batch,
        "peak": max(matmul_rate, conv_rate),
    }


def machine_peak(device: torch.device, machine: str) -> dict[str, Any]:
    """``{"fp32": {...}, "bf16": {...}[, "fp16": {...}], "measured": {threads, load}}`` for
    this machine: from the cache when it was measured before, else measured now and cached
    (delete the file to measure again, on a quiet machine)."""
    path = cache_root() / "peak" / f"{machine}-{device.type}.json"
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and "fp32" in cached:
            return cached
    except (OSError, ValueError):
        pass
    names = ["fp32", "tf32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    peaks: dict[str, Any] = {}
    for name in names:
        # fp32 with TF32 off (cuDNN allows it by default), tf32 with it on, as the fast
        # paths run them; the bf16 / fp16 tensors are made in their dtype.
        with precision_context("fp32" if name in ("bf16", "fp16") else name, device):
            peaks[name] = measure_peak(device, DTYPES[name])
    if device.type != "cuda":
        peaks["tf32"] = peaks["fp32"]  # TF32 is fp32 itself on a CPU
    # Measured under load, the peak is too low for good: say how loaded the machine was.
    peaks["measured"] = {
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "at": io.utc_now(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_json_atomic(path, peaks)
    return peaks


def flops_per_image(gen: Generator, model: ResolvedModel) -> float | None:
    """FLOPs of generating one image with ``model``'s sampler settings (None when it takes
    more than ``MAX_COUNTED_NFE`` network evaluations); an eager call, before any fast path
    is applied to ``gen``."""
    from torch.utils.flop_counter import FlopCounterMode

    nfe = gen.nfe(model.settings)
    if nfe is None or nfe > MAX_COUNTED_NFE:
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seeds = [0]
    # The math backend: attention as matrix products the counter sees on every device (it
    # has no formula for the CPU's fused attention kernel and would count it as zero).
    with (
        torch.inference_mode(),
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False) as counter,
    ):
        gen.sample(
            seeds, labels_for(gen, seeds, model.sample.labels, model.settings), model.settings
        )
    return float(counter.get_total_flops())


def against_peak(
    flops: float | None, images_per_s: float, precision: str | None, peaks: dict[str, Any]
) -> dict[str, float | None]:
    """The record fields of one result: FLOPs per image, the GFLOP/s it reached, the peak of
    its dtype and the fraction of that peak."""
    peak = peaks.get(precision or "fp32", {}).get("peak")
    achieved = None if flops is None else flops * images_per_s / 1e9
    return {
        "flops_per_image": flops,
        "gflops_per_s": achieved,
        "peak_gflops_per_s": peak,
        "peak_fraction": None if achieved is None or not peak else achieved / peak,
    }
