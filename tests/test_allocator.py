"""``genbench.core.allocator``: a CPU forward loop reuses freed activations instead of
page-faulting them in again at every pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from genbench.core.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
    torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
)
x = torch.rand(8, 3, 256, 256)  # 64 MiB activations: above glibc's own mmap threshold
faults = []
with torch.no_grad():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


def forward_faults(apply: bool) -> tuple[bool, list[int]]:
    """(applied, minor page faults of each of 6 forward passes) in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "1" if apply else "0"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", [int(n) for n in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_forward_passes_reuse_freed_activations() -> None:
    plain_applied, plain = forward_faults(False)
    applied, kept = forward_faults(True)
    assert not plain_applied and applied
    # Without the setting every pass faults its activations in again (64 MiB = 16,384
    # pages each); with it, the passes after the first two fault little or nothing (now
    # and then one block: hence sums, with a wide margin).
    assert min(plain[2:]) > 16_384, plain
    assert sum(kept[2:]) < sum(plain[2:]) / 5, (kept, plain)


def test_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from genbench.core.allocator import ENV, keep_freed_memory

    monkeypatch.setenv(ENV, "0")
    assert keep_freed_memory() is False
