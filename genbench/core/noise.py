"""Per-sample noise: standard normals where row i depends only on seed i (and a stream).

A counter-based generator: every value is a hash of (seed, stream, element index), so a
whole batch is drawn with a fixed number of vectorised integer ops on the target device,
whatever the batch size, instead of one generator call per image. An image sampled from
this noise therefore depends only on its seed, never on the batch size, the order or the
number of processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence

import torch

_MASK32 = 0xFFFFFFFF
_SEED_LIMIT = 1 << 63  # seeds travel as int64
_STREAM_LIMIT = 1 << 32
# TheIronBorn's improved "lowbias32" multipliers (Wellons' hash-prospector). Both are below
# 2^31, so a 32-bit value times either stays below 2^63: int64 arithmetic never overflows.
_M1, _M2 = 0x21F0AAAD, 0x735A2D97
_TWO_PI = 6.283185307179586

NoiseClock = Callable[[Callable[[], torch.Tensor]], torch.Tensor]
"""Wraps every draw: ``clock(draw)`` must call ``draw()`` and return its tensor."""

# Set by ``noise_clock``: the harness's timer uses it to measure the noise share.
_NOISE_CLOCK: contextvars.ContextVar[NoiseClock | None] = contextvars.ContextVar(
    "genbench_noise_clock", default=None
)


@contextlib.contextmanager
def noise_clock(clock: NoiseClock) -> Iterator[None]:
    """Route every ``seeded_randn`` draw inside the block through ``clock`` (to time them)."""
    token = _NOISE_CLOCK.set(clock)
    try:
        yield
    finally:
        _NOISE_CLOCK.reset(token)


def _mix32(x):
    """A bijective 32-bit integer hash (xorshift-multiply), for ints and int64 tensors alike.

    Works in place on a tensor argument (pass a temporary): it runs on every noise element.
    """
    x ^= x >> 16
    x *= _M1
    x &= _MASK32
    x ^= x >> 15
    x *= _M2
    x &= _MASK32
    x ^= x >> 15
    return x


_ROUNDS = tuple(_mix32((0x9E3779B9 * (r + 1)) & _MASK32) for r in range(4))


def _row_keys(seeds: torch.Tensor, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys per seed: a 4-round Feistel network over the seed's two halves with
    stream-dependent round constants, hence one-to-one in the seed for a fixed stream."""
    lo, hi = seeds & _MASK32, seeds >> 32
    for r, const in enumerate(_ROUNDS):
        c = _mix32(stream ^ const)
        if r % 2 == 0:
            lo = lo ^ _mix32(hi ^ c)
        else:
            hi = hi ^ _mix32(lo ^ c)
    return lo, hi


def _counter_randn(seeds: torch.Tensor, numel: int, stream: int) -> torch.Tensor:
    """(len(seeds), numel) float32 normals; element j of a row depends on (seed, stream, j)."""
    pairs = (numel + 1) // 2
    k1, k2 = (k.unsqueeze(1) for k in _row_keys(seeds, stream))
    ctr = torch.arange(2 * pairs, device=seeds.device, dtype=torch.int64).unsqueeze(0)
    # Two keyed rounds: the first permutes the counters, the second decorrelates rows.
    bits = _mix32(_mix32(ctr ^ k1) ^ k2).view(len(seeds), pairs, 2)
    # 24-bit uniforms in (0, 1), exact in float32; Box-Muller turns each pair into two normals.
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    radius = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    theta = _TWO_PI * u[..., 1]
    z = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=-1)
    return z.view(len(seeds), 2 * pairs)[:, :numel]


def seeded_randn(
    seeds: Sequence[int], shape: Sequence[int], device: torch.device, stream: int = 0
) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape); row i depends only on seeds[i].

    ``stream`` picks an independent sequence per purpose (latents, per-step noise, ...),
    so adding a new kind of draw never shifts the values of another. Values are a hash of
    (seed, stream, element index) drawn in one vectorised pass on ``device`` (identical
    bits on CPU and CUDA up to float32 rounding of log/cos/sin); seeds lie in [0, 2^63),
    streams in [0, 2^32). Element j of a row does not depend on ``shape`` beyond j's flat
    index, and |z| < 5.9 (24-bit uniforms).
    """
    if not 0 <= stream < _STREAM_LIMIT:
        raise ValueError(f"stream must be in [0, {_STREAM_LIMIT}), got {stream}")
    shape = tuple(int(s) for s in shape)
    seed_list = [int(s) for s in seeds]
    if seed_list and not (min(seed_list) >= 0 and max(seed_list) < _SEED_LIMIT):
        raise ValueError(f"seeds must be in [0, 2^63), got {min(seed_list)}..{max(seed_list)}")
    numel = math.prod(shape)

    def draw() -> torch.Tensor:
        if not seed_list or numel == 0:
            return torch.zeros((len(seed_list), *shape), device=device)
        keys = torch.tensor(seed_list, dtype=torch.int64).to(device, non_blocking=True)
        return _counter_randn(keys, numel, stream).reshape(len(seed_list), *shape)

    clock = _NOISE_CLOCK.get()
    return draw() if clock is None else clock(draw)
