"""Devices: choosing one from a user's string, and timing work that runs on it."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from genbench.core.errors import GenbenchError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str, where: str = "--device") -> torch.device:
    """``auto`` picks CUDA when present; an unknown or unavailable device is a usage error
    naming ``where`` the name came from (``--device``, ``benchmark.device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise GenbenchError(f"{where}: unknown device {name!r}; valid: {DEVICE_CHOICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenbenchError(f"{where}: {name}: no CUDA device is available; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise GenbenchError(f"{where}: unsupported device {name!r}; valid: {DEVICE_CHOICES}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one ``fn()`` with its work on ``device`` finished: CUDA events after a
    synchronisation on GPU, ``perf_counter`` on CPU."""
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
