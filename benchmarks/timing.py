"""Sampling-time measurement: warm-up excluded and reported, repeats, median and spread.

On CUDA each call is bracketed by CUDA events after a synchronisation; on CPU by
``time.perf_counter``. Raw per-repeat seconds are kept so later comparisons can test them.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class TimingResult:
    """One timed sampling configuration; seconds are per call of ``batch_size`` images."""

    device: str
    batch_size: int
    nfe: int
    warmup_s: list[float]
    raw_s: list[float]
    median_s: float
    iqr_s: float
    images_per_s: float
    s_per_50k: float
    ms_per_nfe: float
    peak_memory_bytes: int | None
    peak_memory_kind: str

    def to_dict(self) -> dict:
        return asdict(self)


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    # ru_maxrss is KiB on Linux, bytes on macOS; it is the whole process's high-water mark.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_sampling(
    fn: Callable[[], object],
    *,
    device: torch.device,
    batch_size: int,
    nfe: int,
    repeats: int,
    warmup: int,
) -> TimingResult:
    """Time ``fn`` (one sampling call of ``batch_size`` images) ``repeats`` times."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = [_time_once(fn, device) for _ in range(warmup)]
    raw = [_time_once(fn, device) for _ in range(repeats)]
    median = statistics.median(raw)
    q1, q3 = _quartiles(raw)
    ips = batch_size / median
    peak, kind = _peak_memory(device)
    return TimingResult(
        device=str(device),
        batch_size=batch_size,
        nfe=nfe,
        warmup_s=warm,
        raw_s=raw,
        median_s=median,
        iqr_s=q3 - q1,
        images_per_s=ips,
        s_per_50k=50_000 / ips,
        ms_per_nfe=1000.0 * median / max(nfe, 1),
        peak_memory_bytes=peak,
        peak_memory_kind=kind,
    )
