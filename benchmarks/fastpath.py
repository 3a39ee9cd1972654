"""Sampling fast paths: precision, channels-last, ``torch.compile`` and CUDA graphs.

All are off by default, opt-in per spec (``[timing]``) or per flag, and recorded with every
timing result. They are applied generically to a generator's sampling networks
(``Generator.sampling_modules()``) and around its ``sample`` call, never by special-casing
a generator, so ``bench run`` and ``bench speed`` share this one code path:

- ``precision``: ``fp32`` is IEEE fp32 (TF32 off for CUDA matmuls and convolutions);
  ``tf32`` allows TF32 tensor cores on CUDA (no effect on CPU); ``bf16`` / ``fp16`` run
  ``sample`` under ``torch.autocast`` (the sampler's own arithmetic stays fp32 because
  fp32 state times a low-precision network output promotes back to fp32).
- ``channels_last``: the networks' weights in NHWC memory format; convolutions follow.
- ``compile``: each network's ``forward`` through ``torch.compile`` with that mode.
- ``cuda_graphs``: each network's forward captured once per input signature into a
  ``torch.cuda.CUDAGraph`` and replayed (the fixed-shape denoising step).

Every fast path's images match fp32 eager on the same seeds within ``TOLERANCE`` (mean
absolute difference on [-1, 1] images; the tests check it on CPU, GPU-only paths under
the ``gpu`` marker).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from genbench.core.cache import cache_root
from genbench.core.errors import GenbenchError

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
CompileMode = Literal["none", "default", "reduce-overhead", "max-autotune"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
COMPILE_MODES: tuple[str, ...] = ("none", "default", "reduce-overhead", "max-autotune")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Documented tolerances: mean |fast - fp32 eager| over [-1, 1] images of the same seeds.
# fp32-exact paths differ only by reordered sums; low precision by its rounding (bf16 keeps
# 8 mantissa bits, fp16 11), accumulated over the sampler's steps.
TOLERANCE: dict[str, float] = {"fp32": 1e-3, "tf32": 1e-2, "bf16": 5e-2, "fp16": 1e-2}

MAX_GRAPHS = 8  # distinct input signatures captured per network before giving up


@dataclass(frozen=True)
class FastPaths:
    """The fast paths of one timing configuration (all off by default)."""

    precision: Precision = "fp32"
    channels_last: bool = False
    compile: CompileMode = "none"
    cuda_graphs: bool = False

    @classmethod
    def from_section(cls, section: Any) -> FastPaths:
        """The fast paths named by a spec's ``[timing]`` section."""
        return cls(
            precision=section.precision,
            channels_last=section.channels_last,
            compile=section.compile,
            cuda_graphs=section.cuda_graphs,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def override(self, **values: Any) -> FastPaths:
        """These fast paths with some fields replaced (command-line flags over a spec's
        ``[timing]``); a None value keeps the field."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def tolerance(self) -> float:
        """Mean absolute image difference allowed against fp32 eager (see ``TOLERANCE``)."""
        return TOLERANCE[self.precision]

    def check(self, device: torch.device) -> None:
        """Raise ``GenbenchError`` for a combination this device cannot run."""
        if self.precision not in PRECISIONS:
            raise GenbenchError(
                f"--precision: unknown {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        if self.compile not in COMPILE_MODES:
            raise GenbenchError(
                f"--compile: unknown mode {self.compile!r}; valid: {', '.join(COMPILE_MODES)}"
            )
        if self.cuda_graphs and device.type != "cuda":
            raise GenbenchError("--cuda-graphs needs --device cuda; drop it on CPU")
        if self.cuda_graphs and self.compile == "reduce-overhead":
            raise GenbenchError(
                "--cuda-graphs with --compile reduce-overhead: that mode already captures CUDA "
                "graphs; use one of them"
            )


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device, cache: bool = True) -> Iterator[None]:
    """Run the block at ``precision``: TF32 switches, and autocast for bf16 / fp16.

    ``cache=False`` turns off autocast's weight-cast cache, which CUDA graph capture needs.
    """
    # The flag API eval/extractors.py uses too: torch refuses reads that mix it with the
    # newer fp32_precision API.
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision in _AUTOCAST:
            with torch.autocast(device.type, dtype=_AUTOCAST[precision], cache_enabled=cache):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class _GraphedForward:
    """A network forward replayed from CUDA graphs, one per input signature.

    Tensor arguments are copied into static buffers before each replay; outputs are cloned
    so a caller may keep them across calls. Non-tensor arguments are part of the signature.
    """

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.graphs: dict[tuple, tuple[list[torch.Tensor], torch.cuda.CUDAGraph, Any]] = {}

    @staticmethod
    def _signature(flat: list[Any], spec: Any) -> tuple:
        leaves = tuple(
            (tuple(x.shape), x.dtype, x.device, x.stride())
            if isinstance(x, torch.Tensor)
            else ("value", repr(x))
            for x in flat
        )
        autocast = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda")
        return (repr(spec), leaves, autocast)

    def _capture(self, flat: list[Any], spec: Any):
        static = [x.clone() if isinstance(x, torch.Tensor) else x for x in flat]
        args, kwargs = tree_unflatten(static, spec)
        # Warm up on a side stream (lazy initialisation, cuDNN autotuning) before capturing.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private memory pool per graph: no aliasing
            out = self.fn(*args, **kwargs)
        return static, graph, out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat, spec = tree_flatten((args, kwargs))
        key = self._signature(flat, spec)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= MAX_GRAPHS:
                raise GenbenchError(
                    f"--cuda-graphs: network {self.name!r} was called with more than "
                    f"{MAX_GRAPHS} input shapes; CUDA graphs need fixed shapes, drop the flag"
                )
            entry = self.graphs[key] = self._capture(flat, spec)
        static, graph, out = entry
        for buf, x in zip(static, flat, strict=True):
            if isinstance(x, torch.Tensor):
                buf.copy_(x)
        graph.replay()
        leaves, out_spec = tree_flatten(out)
        return tree_unflatten(
            [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves], out_spec
        )


INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
_OURS: list[str] = []
"""The inductor cache directories genbench itself set (not the user's choice)."""


def _users_inductor_cache() -> str | None:
    """``$TORCHINDUCTOR_CACHE_DIR`` when the user chose it: not torch's default (which
    torch, and imports such as diffusers', write into the variable) and not genbench's."""
    current = os.environ.get(INDUCTOR_ENV)
    if not current or current in _OURS:
        return None
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(current) == os.path.abspath(default_cache_dir()):
            return None
    except ImportError:  # another torch layout: trust the variable
        pass
    return current


def inductor_cache_dir() -> Path:
    """Where ``torch.compile``'s on-disk caches go: the user's ``$TORCHINDUCTOR_CACHE_DIR``,
    else ``<genbench cache>/inductor/<torch version>-<machine>`` (set for this process), so
    that a second run on the same machine finds the kernels the first one compiled and a
    cleaned ``/tmp`` or another torch build never serves stale ones."""
    users = _users_inductor_cache()
    if users:
        return Path(users)
    machine = f"{platform.machine()}-{platform.processor() or 'cpu'}-{os.cpu_count()}"
    digest = hashlib.sha256(machine.encode()).hexdigest()[:12]
    path = cache_root() / "inductor" / f"torch{torch.__version__}-{digest}"
    os.environ[INDUCTOR_ENV] = str(path)
    _OURS.append(str(path))
    return path


def apply_to_modules(modules: dict[str, nn.Module], fast: FastPaths) -> None:
    """Apply channels-last, compile and CUDA graphs to ``modules`` in place.

    Each network's ``forward`` is replaced on the instance (weights, state-dict keys and
    hooks are untouched); compile goes inside the CUDA-graph wrapper so graphs capture the
    compiled kernels.
    """
    for name, module in modules.items():
        if fast.channels_last:
            module.to(memory_format=torch.channels_last)
        if fast.compile == "none" and not fast.cuda_graphs:
            continue
        forward: Callable[..., Any] = module.forward
        if fast.compile != "none":
            inductor_cache_dir()
            mode = None if fast.compile == "default" else fast.compile
            forward = torch.compile(forward, mode=mode)
        if fast.cuda_graphs:
            forward = _GraphedForward(forward, name)
        module.forward = forward  # an instance attribute shadows the class's forward


def prepare_sampler(
    gen: Any, fast: FastPaths, call: Callable[[], torch.Tensor]
) -> Callable[[], torch.Tensor]:
    """Apply ``fast`` to ``gen``'s sampling networks; returns ``call`` run at its precision.

    ``call`` is one sampling call of ``gen`` (for example a lambda around ``gen.sample``).
    The generator is changed in place: build a fresh one for another configuration.
    """
    fast.check(gen.device)
    mods = gen.modules()
    apply_to_modules({name: mods[name] for name in gen.sampling_modules()}, fast)
    cache = not fast.cuda_graphs

    def run() -> torch.Tensor:
        with precision_context(fast.precision, gen.device, cache=cache):
            return call()

    return run
