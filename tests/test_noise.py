"""The counter-based per-sample noise of ``genbench.core.noise.seeded_randn``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode

from genbench.core.noise import _mix32, seeded_randn

CPU = torch.device("cpu")


def test_shape_dtype_and_device():
    z = seeded_randn([3, 1, 4], (2, 5, 5), CPU, stream=7)
    assert z.shape == (3, 2, 5, 5) and z.dtype == torch.float32 and z.device == CPU
    assert seeded_randn([], (2, 3), CPU).shape == (0, 2, 3)
    assert seeded_randn([1, 2], (0,), CPU).shape == (2, 0)


def test_rows_depend_only_on_their_seed():
    seeds = [5, 0, 123_456_789, 2**40 + 3, 17]
    batch = seeded_randn(seeds, (3, 8, 8), CPU, stream=4)
    for i, seed in enumerate(seeds):
        alone = seeded_randn([seed], (3, 8, 8), CPU, stream=4)[0]
        assert torch.equal(batch[i], alone)
    reordered = seeded_randn(seeds[::-1], (3, 8, 8), CPU, stream=4)
    assert torch.equal(reordered, batch.flip(0))
    # a big batch gives the same rows as small ones (no batch-size dependence)
    big = seeded_randn(list(range(300)), (3, 8, 8), CPU, stream=4)
    assert torch.equal(big[17], batch[4]) and torch.equal(big[5], batch[0])


def test_element_values_do_not_depend_on_shape():
    flat = seeded_randn([9], (7,), CPU, stream=2)[0]
    longer = seeded_randn([9], (2, 2, 2), CPU, stream=2)[0].flatten()
    assert torch.equal(longer[:7], flat)


def test_seeds_and_streams_differ_and_are_uncorrelated():
    a = seeded_randn(list(range(64)), (4096,), CPU, stream=0)
    b = seeded_randn(list(range(1, 65)), (4096,), CPU, stream=0)  # neighbouring seeds
    c = seeded_randn(list(range(64)), (4096,), CPU, stream=1)  # neighbouring stream
    d = seeded_randn(list(range(64)), (4096,), CPU, stream=1 << 20)
    for other in (b, c, d):
        assert not torch.equal(a, other)
        r = np.corrcoef(a.flatten().numpy(), other.flatten().numpy())[0, 1]
        assert abs(r) < 0.01  # 262k pairs: |r| of independent draws is ~0.002
    # no two rows of one batch are equal, and neighbouring elements are uncorrelated
    assert len({tuple(row[:8].tolist()) for row in a}) == 64
    lag = np.corrcoef(a[:, :-1].flatten().numpy(), a[:, 1:].flatten().numpy())[0, 1]
    assert abs(lag) < 0.01


def test_distribution_is_standard_normal():
    z = seeded_randn(list(range(1000)), (3, 16, 16), CPU, stream=11).flatten().numpy()
    n = z.size  # 768k draws
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2 / n)
    assert stats.kstest(z[:200_000], "norm").pvalue > 1e-3
    # tails: the share beyond 3 sigma matches the normal's 0.27% within a few percent of it
    tail = np.mean(np.abs(z) > 3)
    assert tail == pytest.approx(2 * stats.norm.sf(3), rel=0.1)
    assert np.abs(z).max() < 5.9


def test_known_values_are_pinned():
    """A change of these values changes every generated image: make it on purpose."""
    z = seeded_randn([0, 1], (3,), CPU, stream=0)
    expected = [[1.918901, -0.484832, -0.982731], [1.399096, -0.200079, 0.077548]]
    torch.testing.assert_close(z, torch.tensor(expected), atol=1e-5, rtol=0)
    high = seeded_randn([2**40 + 1], (2,), CPU, stream=9)
    torch.testing.assert_close(high, torch.tensor([[0.995806, -1.418889]]), atol=1e-5, rtol=0)


def test_mix32_is_a_32_bit_bijection_without_overflow():
    x = torch.arange(1 << 16, dtype=torch.int64) * 65_537 + 12_345  # spread over 32 bits
    x = x & 0xFFFFFFFF
    h = _mix32(x.clone())
    assert h.min() >= 0 and h.max() < 2**32
    assert len(torch.unique(h)) == len(x)  # one-to-one on these inputs
    # the int64 tensor path and the Python-int path agree bit for bit
    assert [_mix32(int(v)) for v in x[:50]] == h[:50].tolist()
    # worst-case input: products stay below 2^63
    assert _mix32(0xFFFFFFFF) < 2**32


@pytest.mark.parametrize(("seeds", "stream"), [([-1], 0), ([2**63], 0), ([0], -1), ([0], 2**32)])
def test_out_of_range_seeds_and_streams_are_errors(seeds, stream):
    with pytest.raises(ValueError, match="must be in"):
        seeded_randn(seeds, (2,), CPU, stream)


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops(n_seeds: int) -> int:
    with _CountOps() as counter:
        seeded_randn(list(range(n_seeds)), (3, 8, 8), CPU, stream=3)
    return counter.count


def test_vectorised_draw_costs_the_same_ops_for_any_batch():
    """One draw is a fixed sequence of tensor ops, not one generator call per image."""
    assert _ops(1) == _ops(1024) < 128  # a per-image loop would need >= 1024


@pytest.mark.gpu
def test_same_values_on_cuda_as_on_cpu():
    seeds = [0, 7, 2**40 + 1]
    cpu = seeded_randn(seeds, (3, 32, 32), CPU, stream=5)
    gpu = seeded_randn(seeds, (3, 32, 32), torch.device("cuda"), stream=5)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
