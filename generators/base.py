"""The generator plugin interface every genbench generator implements.

A generator is one class: a pydantic ``Config`` of its hyper-parameters (defaults = the
published CIFAR-10 setting), ``train_step`` (one optimiser update), ``sample`` (images in
[-1, 1] where every random draw comes from the sample's own seed), ``nfe`` and state dicts.
The harness owns everything around it: data, the loop, checkpoints, timing, evaluation.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from genbench.core.registry import Registry


class GeneratorConfig(BaseModel):
    """Base of every generator's hyper-parameters: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DataShape:
    """What a generator needs to know about its data: image shape and number of classes."""

    channels: int
    image_size: int
    num_classes: int = 0


@dataclass(frozen=True)
class Batch:
    """One training batch: images in [-1, 1] (N, C, H, W) and optional integer labels."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def split(self, parts: int) -> list[Batch]:
        """``parts`` micro-batches for gradient accumulation (sizes differ by at most one).

        Weight each micro-batch's loss by ``len(micro) / len(batch)`` so the accumulated
        gradient equals the full batch's.
        """
        if not 1 <= parts <= len(self):
            raise ValueError(f"cannot split a batch of {len(self)} into {parts} micro-batches")
        images = self.images.tensor_split(parts)
        labels = self.labels.tensor_split(parts) if self.labels is not None else [None] * parts
        return [Batch(x, y) for x, y in zip(images, labels, strict=True)]


class Generator(ABC):
    """One generative model: build from a config, train one step at a time, sample by seed."""

    Config: ClassVar[type[GeneratorConfig]]
    conditional: ClassVar[bool] = False  # True: ``sample`` uses class labels

    def __init__(self, config: GeneratorConfig, data: DataShape, device: torch.device) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}")
        self.config = config
        self.data = data
        self.device = torch.device(device)
        self.image_size: int = data.image_size  # a generator may train at another size

    @abstractmethod
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimiser update on ``batch``; returns losses for logging."""

    @abstractmethod
    def sample(
        self,
        seeds: Sequence[int],
        labels: torch.Tensor | None = None,
        steps: int | str | None = None,
        guidance: float | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1], one per seed; image i depends only on ``seeds[i]`` (and label)."""

    @abstractmethod
    def nfe(self, steps: int | str | None = None, guidance: float | None = None) -> int:
        """Network evaluations per image for a sampling run with ``steps`` and ``guidance``
        (classifier-free guidance evaluates the network twice per step)."""

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks, by name; checkpoints and parameter counts are built from these."""

    def bits_per_dim(self, batch: Batch) -> torch.Tensor | None:
        """Per-image upper bound on the negative log-likelihood of ``batch`` in bits per
        dimension (likelihood models such as DDPM's VLB); None when the model has none."""
        return None

    def sampling_modules(self) -> list[str]:
        """Names of the networks used at sampling time (counted as the model's parameters)."""
        return list(self.modules())

    def num_parameters(self) -> int:
        """Parameters of the networks used for sampling."""
        mods = self.modules()
        return sum(p.numel() for n in self.sampling_modules() for p in mods[n].parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All network tensors, flat, keys prefixed with the network name."""
        out: dict[str, torch.Tensor] = {}
        for name, mod in self.modules().items():
            for key, value in mod.state_dict().items():
                out[f"{name}.{key}"] = value
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``state_dict``; unknown or missing keys are errors."""
        mods = self.modules()
        split: dict[str, dict[str, torch.Tensor]] = {name: {} for name in mods}
        for key, value in state.items():
            name, _, rest = key.partition(".")
            if name not in split:
                raise KeyError(f"state key {key!r} names no network of {type(self).__name__}")
            split[name][rest] = value
        for name, mod in mods.items():
            mod.load_state_dict(split[name], strict=True)

    def train(self, mode: bool = True) -> None:
        for mod in self.modules().values():
            mod.train(mode)

    def eval(self) -> None:
        self.train(False)


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (one draw per image from the
    global RNG): the usual CIFAR-10 training augmentation."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip.view(-1, *([1] * (images.dim() - 1))), images.flip(-1), images)


def set_warmup_lr(opt: torch.optim.Optimizer, lr: float, step: int, warmup_steps: int) -> None:
    """Linear learning-rate warm-up: ``lr`` x min(1, step / warmup_steps) on every group
    (Ho et al. 2020, appendix B); ``warmup_steps`` = 0 means the full rate at once."""
    factor = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    for group in opt.param_groups:
        group["lr"] = lr * factor


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run the block with ``modules`` in eval mode and give each its own mode back after.

    Sampling needs it: dropout or batch statistics would make an image depend on more than
    its seed, and sampling in the middle of training must not leave the nets in eval mode.
    """
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


@contextlib.contextmanager
def gradient_sync(modules: Sequence[nn.Module], sync: bool) -> Iterator[None]:
    """Run a backward pass with (``sync``) or without DDP's gradient all-reduce.

    Accumulating micro-batches call this with ``sync=False`` for all but the last one, so
    a DDP-wrapped network all-reduces once per optimiser update. Plain modules ignore it.
    """
    with contextlib.ExitStack() as stack:
        if not sync:
            for mod in modules:
                no_sync = getattr(mod, "no_sync", None)
                if no_sync is not None:
                    stack.enter_context(no_sync())
        yield


GENERATORS: Registry[type[Generator]] = Registry("generator", base=Generator)


# ----------------------------------------------------------------- per-sample noise
#
# A counter-based generator: every value is a hash of (seed, stream, element index), so a
# whole batch is drawn with a fixed number of vectorised integer ops on the target device,
# whatever the batch size, instead of one generator call per image.

_MASK32 = 0xFFFFFFFF
_SEED_LIMIT = 1 << 63  # seeds travel as int64
_STREAM_LIMIT = 1 << 32
# TheIronBorn's improved "lowbias32" multipliers (Wellons' hash-prospector). Both are below
# 2^31, so a 32-bit value times either stays below 2^63: int64 arithmetic never overflows.
_M1, _M2 = 0x21F0AAAD, 0x735A2D97
_TWO_PI = 6.283185307179586

# ``benchmarks.timing`` sets this to a wrapper that times every draw (the noise share).
_NOISE_CLOCK: contextvars.ContextVar[
    Callable[[Callable[[], torch.Tensor]], torch.Tensor] | None
] = contextvars.ContextVar("genbench_noise_clock", default=None)


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
