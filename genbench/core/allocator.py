"""Keep freed memory in the process instead of handing it back to the OS at every free.

glibc's malloc serves blocks above its mmap threshold (at most 32 MiB by its own dynamic
rule) with fresh ``mmap`` calls and unmaps them on ``free``. A CPU forward pass allocates
activations of tens to hundreds of MiB (the FID Inception at batch 50: 276 MiB for one
layer), so every batch page-faults all of them in again: on the 2-core CI machine that was
about 830,000 minor faults and 2.2 s of system time per Inception batch of 50, a third of
its time. Raising the mmap and trim thresholds lets malloc reuse freed blocks: the same
forward pass ran 10.1 -> 15.6 images/s. The cost: the process keeps its high-water mark of
memory until it exits. ``BENCH_KEEP_FREED_MEMORY=0`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "BENCH_KEEP_FREED_MEMORY"
"""Set to 0 to leave glibc's malloc as it is."""

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_MMAP = 1 << 30  # blocks up to 1 GiB come from the heap...
_TRIM = (1 << 31) - 1  # ...and up to 2 GiB of free heap top stays mapped (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds (see the module docstring); True when
    applied, False on other platforms or C libraries, or with ``BENCH_KEEP_FREED_MEMORY=0``."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV, "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, _MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, _TRIM))
